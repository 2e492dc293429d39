"""`python -m harness table`: the seed t-interval against scipy by hand, the paired bootstrap on losses with a
known difference, and the command end to end on a synthetic sweep folder (several seeds, a failed and a
skipped cell)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness.records import config_hash, write_record
from harness.stats import (
    paired_bootstrap_ppl_diff,
    perplexity,
    resample_counts,
    resampled_perplexity,
    t_interval,
)

TEXT = "ab" * 32  # the evaluated text's key: the same for every cell, so all their segments pair up
TOKENS = np.array([128.0] * 39 + [64.0])  # 40 segments of 128 scored tokens, the last one shorter
ERROR = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


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


# ---------------------------------------------------------------- the command on a synthetic sweep


def stage(rate: np.ndarray) -> dict:
    return {"nll": (rate * TOKENS).tolist(), "tokens": TOKENS.astype(int).tolist()}


def ppl(rate: np.ndarray) -> float:
    return float(perplexity(rate * TOKENS, TOKENS))


def write_cell(sweep, adapter: str, rank: int, seed: int, status: str = "ok", losses: dict | None = None,
               metrics: dict | None = None, error: str = "") -> dict:
    overrides = [f"adapter={adapter}", f"adapter.rank={rank}", f"train.seed={seed}"]
    record = {"config_hash": config_hash(overrides), "status": status, "error": error, "overrides": overrides,
              "cell": {"model": "tiny-llama", "quantizer": "nf4", "adapter": adapter, "rank": rank,
                       "targets": "q_proj,v_proj", "seed": seed, "steps": 2, "lr": 0.001},
              "seed": seed, "metrics": metrics or {}, "seconds": 1.0}
    if losses is not None:
        record["losses"] = losses
    write_record(sweep / "cells" / record["config_hash"] / "record.json", record)
    return record


@pytest.fixture
def sweep(tmp_path):
    """lora at rank 4 (seeds 0-2), rank 8 (seeds 0-1 ok, seed 2 failed) and rank 16 (seed 0 only), and a
    skipped qalora cell. Every cell shares the full-precision reference and the quantized base's
    evaluation."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 0.3, TOKENS.size)  # per segment, shared by every model
    reference = 3.4 + difficulty
    before = reference + 0.05
    for rank, seeds in ((4, (0, 1, 2)), (8, (0, 1)), (16, (0,))):
        for seed in seeds:
            after = before - 0.01 * math.log2(rank) + rng.normal(0, 0.002, TOKENS.size)
            losses = {"text": TEXT, "segment_tokens": 128, "full_precision": stage(reference),
                      "before": stage(before), "after": stage(after)}
            metrics = {"perplexity_full_precision": ppl(reference), "perplexity_before": ppl(before),
                       "perplexity_after": ppl(after), "trainable_params": 1000.0 * rank,
                       "train_tokens_per_second": 300 + 10 * seed, "peak_memory_bytes": 2.5e8,
                       "bits_per_param": 4.127}
            write_cell(tmp_path, "lora", rank, seed, losses=losses, metrics=metrics)
    write_cell(tmp_path, "lora", 8, 2, status="failed", error=ERROR + "\nsecond line of the message")
    write_cell(tmp_path, "qalora", 8, 0, status="skipped", error="qalora needs an integer quantizer, got nf4")
    return tmp_path


def table(monkeypatch, *args: str) -> None:
    from harness.cli.table import main

    monkeypatch.setattr(sys, "argv", ["harness", *map(str, args)])
    main()


def test_table_writes_every_file(sweep, monkeypatch, capsys):
    table(monkeypatch, sweep)
    printed = capsys.readouterr().out
    names = [f"{t}.{ext}" for t in ("summary", "comparisons") for ext in ("md", "tex", "csv")]
    assert all((sweep / "tables" / name).stat().st_size > 0 for name in names)
    assert "comparisons: " in printed and "ppl after" in printed and "summary.csv" in printed

    summary = pd.read_csv(sweep / "tables" / "summary.csv").set_index("rank")
    lora = summary[summary.adapter == "lora"]
    records = [json.loads(p.read_text()) for p in sweep.glob("cells/*/record.json")]
    after4 = [r["metrics"]["perplexity_after"] for r in records if r["cell"]["rank"] == 4]
    half = scipy_stats.t.ppf(0.975, 2) * np.std(after4, ddof=1) / math.sqrt(3)
    row = lora.loc[4]
    # the CSV's decimal text of the same float64 numbers: rounding only
    assert (row.perplexity_after_mean, row.perplexity_after_low, row.perplexity_after_high) == pytest.approx(
        (np.mean(after4), np.mean(after4) - half, np.mean(after4) + half), rel=1e-12)
    assert lora.loc[8, "perplexity_after_n"] == 2 and lora.loc[8, "cells"] == "2 ok, 1 failed"
    assert lora.loc[16, "perplexity_after_n"] == 1 and math.isnan(lora.loc[16, "perplexity_after_low"])
    assert lora.loc[4, "peak_memory_mb_mean"] == 250.0

    md = (sweep / "tables" / "summary.md").read_text()
    assert "(n=1)" in md and "± " in md and "95%" in md
    assert ERROR in md and "second line" not in md and "skipped" in md and "qalora" in md


def test_comparisons_pair_distinct_evaluations(sweep, monkeypatch, capsys):
    table(monkeypatch, sweep)
    pairs = pd.read_csv(sweep / "tables" / "comparisons.csv")
    # the shared base is one model: compared with the reference once, never with itself
    before = pairs[pairs.stage == "before"]
    assert len(before) == 1 and before.b.iloc[0] == "full precision" and before.resolved.iloc[0]
    after = pairs[pairs.stage == "after"]
    assert len(after) == 3 + 3  # each rank vs the reference, and the three pairs of ranks
    assert (pairs["diff"] != 0).all()
    seeds = after.set_index(["a", "b"]).seeds
    assert seeds["adapter=lora, rank=4", "adapter=lora, rank=8"] == 2  # seed 2 of rank 8 failed
    assert seeds["adapter=lora, rank=4", "adapter=lora, rank=16"] == 1
    md = (sweep / "tables" / "comparisons.md").read_text()
    assert "resolved" in md and "excludes 0" in md


def test_records_without_losses_say_so(sweep, monkeypatch, capsys):
    for path in sweep.glob("cells/*/record.json"):
        record = json.loads(path.read_text())
        record.pop("losses", None)
        write_record(path, record)
    table(monkeypatch, sweep)
    assert "no per-segment losses" in (sweep / "tables" / "comparisons.md").read_text()
    assert "comparisons: 0 resolved, 0 not resolved" in capsys.readouterr().out


def test_a_sweep_where_nothing_finished_still_gets_its_tables(tmp_path, monkeypatch, capsys):
    write_cell(tmp_path, "lora", 8, 0, status="failed", error="ValueError: the loss is NaN at step 3")
    write_cell(tmp_path, "qalora", 8, 0, status="skipped", error="qalora needs an integer quantizer")
    table(monkeypatch, tmp_path)
    assert "the loss is NaN at step 3" in (tmp_path / "tables" / "summary.md").read_text()
    assert "no cell finished" in (tmp_path / "tables" / "comparisons.md").read_text()


@pytest.mark.parametrize("args", [["{empty}"], ["{empty}/nowhere"], []])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        table(monkeypatch, *(a.format(empty=tmp_path) for a in args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "sweep" in err
