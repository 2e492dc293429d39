"""The sweep tables' statistics: a t-interval across seeds and a paired bootstrap of perplexity differences.

Seeds are replicates, so a configuration's metric is reported as the mean over its seeds with a Student-t
interval. Two models scored on the same text share its hard and easy passages, so their perplexity difference
is far better determined than either perplexity alone: the bootstrap resamples the text's segments with the
same indices for both models (and every seed), which keeps that shared part out of the interval.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

# resamples x segments per chunk of the bootstrap: bounds its memory (~32 MB of float64 counts) on long
# evaluation texts; the chunking depends on the segment count only, so the same inputs draw the same resamples
CHUNK_ELEMENTS = 1 << 22


def t_interval(values, confidence: float = 0.95) -> tuple[float, float | None, float | None, int]:
    """values: shape (n,), one number per seed (NaNs, a missing seed, are dropped) -> (mean, low, high, n).

    mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n), s the sample standard deviation (ddof=1). low and high are
    None when n < 2: one seed says nothing about the spread; low == high == mean when every value is the same.
    mean is NaN when n == 0."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return math.nan, None, None, 0
    mean = float(x.mean())
    if n < 2:
        return mean, None, None, n
    # equal values: exactly no spread (their mean's rounding would otherwise leave a ~1e-15 one)
    s = 0.0 if np.ptp(x) == 0 else x.std(ddof=1)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * s / math.sqrt(n))
    return mean, mean - half, mean + half, n


def perplexity(nll, tokens) -> np.ndarray:
    """nll, tokens: shape (..., segments), summed nats and scored tokens per segment -> shape (...):
    exp(sum nll / sum tokens) over the last axis."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    return np.exp(nll.sum(-1) / tokens.sum(-1))


def resample_counts(rng: np.random.Generator, segments: int, resamples: int) -> np.ndarray:
    """-> shape (resamples, segments): how often each segment index was drawn in each resample of `segments`
    indices drawn uniformly with replacement (a sum over a resample is then a matrix product)."""
    draws = rng.integers(0, segments, size=(resamples, segments))
    flat = draws + segments * np.arange(resamples)[:, None]
    counts = np.bincount(flat.ravel(), minlength=resamples * segments)
    return counts.reshape(resamples, segments).astype(float)


def resampled_perplexity(nll, tokens, counts: np.ndarray) -> np.ndarray:
    """nll, tokens: shape (seeds, segments); counts: shape (resamples, segments) from resample_counts ->
    shape (resamples, seeds): each seed's perplexity on each resample of the segments."""
    return np.exp((counts @ np.asarray(nll, dtype=float).T) / (counts @ np.asarray(tokens, dtype=float).T))


def paired_bootstrap_ppl_diff(nll_a, tok_a, nll_b, tok_b, resamples: int = 10_000, seed: int = 0,
                              confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Paired bootstrap interval of perplexity(A) - perplexity(B) on the same text.

    nll_*, tok_*: shape (seeds, segments) or (segments,); row s of A and of B are the same seed, and segment i
    is the same text in both. -> (diff, low, high): diff is the mean over seeds of ppl_A - ppl_B on all
    segments; low and high are the (1 - confidence)/2 and (1 + confidence)/2 percentiles of that mean over
    `resamples` resamples of the segment indices, the same indices for A, B and every seed (a seeded
    generator: the same inputs give the same interval). low and high are None with fewer than 2 segments."""
    arrays = [np.atleast_2d(np.asarray(a, dtype=float)) for a in (nll_a, tok_a, nll_b, tok_b)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"nll and tokens of A and B must have one shape (seeds, segments), got "
                         f"{[a.shape for a in arrays]}")
    nll_a, tok_a, nll_b, tok_b = arrays
    diff = float((perplexity(nll_a, tok_a) - perplexity(nll_b, tok_b)).mean())
    segments = nll_a.shape[1]
    if segments < 2:
        return diff, None, None
    low, high = percentile_interval(
        lambda counts: (resampled_perplexity(nll_a, tok_a, counts)
                        - resampled_perplexity(nll_b, tok_b, counts)).mean(axis=1),
        segments, resamples, seed, confidence)
    return diff, low, high


def percentile_interval(statistic, units: int, resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    """The percentile bootstrap interval of statistic(counts) -> shape (resamples,) over `resamples` resamples
    of `units` indices (segments, items), drawn in chunks so their counts stay within CHUNK_ELEMENTS."""
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // units)
    values = [statistic(resample_counts(rng, units, min(chunk, resamples - start)))
              for start in range(0, resamples, chunk)]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.concatenate(values), [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_item_mean(a, b=None, resamples: int = 10_000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Item-level bootstrap of a task score (the mean of per-item values, e.g. acc's 0/1), or of the paired
    difference mean(A) - mean(B) when b is given: A and B scored on the same items.

    a, b: shape (seeds, items) or (items,); item i is the same item in every row of both. -> (value, low, high):
    value is the mean over seeds of the per-seed item mean (or of the difference); low and high the percentiles
    of that over `resamples` resamples of the item indices, the same indices for A, B and every seed, so what
    the items share (an easy item is easy for both) stays out of a difference's interval. low and high are None
    with fewer than 2 items."""
    x = np.atleast_2d(np.asarray(a, dtype=float))
    if b is not None:
        y = np.atleast_2d(np.asarray(b, dtype=float))
        if x.shape != y.shape:
            raise ValueError(f"A and B must be scored on the same items and seeds, got shapes {x.shape} and {y.shape}")
        x = x - y  # the difference of means is the mean of per-item differences
    items = x.shape[1]
    value = float(x.mean(axis=1).mean())
    if items < 2:
        return value, None, None
    # each resample's per-seed item means (resamples, seeds), then their mean over the seeds
    low, high = percentile_interval(lambda counts: (counts @ x.T / items).mean(axis=1), items, resamples, seed,
                                    confidence)
    return value, low, high
