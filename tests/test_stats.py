"""harness.stats: the seed t-interval against scipy by hand, and the paired bootstrap on losses with a known
difference (its point estimate, its coverage, and what pairing buys)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness.stats import (
    paired_bootstrap_ppl_diff,
    perplexity,
    resample_counts,
    resampled_perplexity,
    t_interval,
)

TOKENS = np.array([128.0] * 39 + [64.0])  # 40 segments of 128 scored tokens, the last one shorter


def test_t_interval_is_scipys_by_hand():
    values = [36.2, 36.9, 37.4, 36.5]
    mean, low, high, n = t_interval(values)
    half = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / math.sqrt(4)
    assert n == 4
    # the same formula evaluated in another order: float64 rounding only
    expected = np.mean(values)
    assert (mean, low, high) == pytest.approx((expected, expected - half, expected + half), rel=1e-12)
    assert t_interval([36.2, float("nan")]) == (36.2, None, None, 1)  # one seed: no interval at all
    assert t_interval([])[1:] == (None, None, 0)


def test_paired_bootstrap_point_estimate_is_the_mean_over_seeds():
    rng = np.random.default_rng(1)
    nll_a, nll_b = (rng.uniform(300, 500, size=(3, 40)) for _ in range(2))
    tokens = np.tile(TOKENS, (3, 1))
    diff, low, high = paired_bootstrap_ppl_diff(nll_a, tokens, nll_b, tokens, resamples=200)
    # exact arithmetic of the same sums: float64 rounding only
    assert diff == pytest.approx(np.mean(perplexity(nll_a, tokens) - perplexity(nll_b, tokens)), rel=1e-12)
    assert low < diff < high
    # one seed as (segments,) or as (1, segments): the same draws, the same interval
    assert paired_bootstrap_ppl_diff(nll_a[0], TOKENS, nll_b[0], TOKENS, resamples=200) == \
        paired_bootstrap_ppl_diff(nll_a[:1], tokens[:1], nll_b[:1], tokens[:1], resamples=200)


def losses_with_difference(rng, shift: float, segments: int = 200) -> tuple[np.ndarray, ...]:
    """-> (nll_a, nll_b, tokens) on the same text: each segment's difficulty (sd 0.5 nats/token) is shared, A
    adds `shift` nats/token and its own small noise (sd 0.02). The text's true perplexities are exp(3.4) and
    exp(3.4 + shift), whatever the sampled segments."""
    tokens = np.full(segments, 128.0)
    difficulty = rng.normal(0, 0.5, segments)
    nll_b = tokens * (3.4 + difficulty)
    nll_a = tokens * (3.4 + shift + difficulty + rng.normal(0, 0.02, segments))
    return nll_a, nll_b, tokens


def test_paired_bootstrap_covers_the_true_difference():
    rng = np.random.default_rng(0)
    truth = math.exp(3.4 + 0.01) - math.exp(3.4)
    covered = []
    for replicate in range(60):
        nll_a, nll_b, tokens = losses_with_difference(rng, 0.01)
        _, low, high = paired_bootstrap_ppl_diff(nll_a, tokens, nll_b, tokens, resamples=2000, seed=replicate)
        covered.append(low <= truth <= high)
    # a 95% interval: 60 replicates cover ~57 times; 50 is over 3 binomial sd below that
    assert sum(covered) >= 50


def test_pairing_narrows_the_interval_and_no_difference_is_not_resolved():
    rng = np.random.default_rng(3)
    nll_a, nll_b, tokens = losses_with_difference(rng, 0.01)
    diff, low, high = paired_bootstrap_ppl_diff(nll_a, tokens, nll_b, tokens)
    assert low > 0  # 0.01 nats/token over 25,600 tokens with paired noise 0.02/segment: resolved
    # unpaired: A and B resampled independently, so the shared difficulty stays in the difference
    draws = np.random.default_rng(0)
    counts_a, counts_b = resample_counts(draws, 200, 10_000), resample_counts(draws, 200, 10_000)
    unpaired = (resampled_perplexity(nll_a[None], tokens[None], counts_a)
                - resampled_perplexity(nll_b[None], tokens[None], counts_b))[:, 0]
    unpaired_width = np.subtract(*np.percentile(unpaired, [97.5, 2.5]))
    # shared sd 0.5 vs paired sd 0.02 per segment: ~25 times narrower by construction; 5 leaves a wide margin
    assert high - low < unpaired_width / 5
    assert unpaired_width > 2 * abs(diff)  # unpaired, the same data would not resolve the difference
    nll_a, nll_b, tokens = losses_with_difference(rng, 0.0)
    _, low, high = paired_bootstrap_ppl_diff(nll_a, tokens, nll_b, tokens)
    assert low < 0 < high  # no real difference: not resolved


def test_item_bootstrap_matches_the_normal_interval_of_a_proportion_and_pairs_items():
    """One seed of 0/1 answers: the bootstrap interval of the accuracy is close to p +- 1.96 sqrt(p(1-p)/n).
    Two models answering the same items, B right wherever A is plus 15 more of 400: the paired difference is
    exactly -15/400 with a narrow interval that excludes 0, while unpaired intervals of the two overlap."""
    from harness.stats import bootstrap_item_mean

    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.4).astype(float)
    p, low, high = bootstrap_item_mean(a)
    assert p == a.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 400)
    # percentile bootstrap vs the normal approximation at n=400: they agree to a few tenths of a point
    assert low == pytest.approx(p - half, abs=0.005) and high == pytest.approx(p + half, abs=0.005)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:15]] = 1.0
    diff, low, high = bootstrap_item_mean(a, b)
    assert diff == pytest.approx(-15 / 400, abs=1e-15)  # float rounding of a mean of 0/1/-1 values
    assert high < 0  # resolved: every changed item moved the same way
    _, low_b, _ = bootstrap_item_mean(b)
    assert low_b < a.mean()  # unpaired, B's interval still reaches below A's accuracy
    # seeds: the value is the mean of the per-seed accuracies, and shapes must agree
    two = np.stack([a, b])
    assert bootstrap_item_mean(two)[0] == pytest.approx((a.mean() + b.mean()) / 2, abs=1e-15)
    with pytest.raises(ValueError, match="same items"):
        bootstrap_item_mean(a, b[:-1])
