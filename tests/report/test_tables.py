"""harness.report.tables: `python -m harness table` on a synthetic sweep folder (several seeds, a failed and a skipped
cell) writes every file, with seed t-intervals computed by hand against scipy; a sweep where nothing finished still
gets its tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tests.report.conftest import ERROR, table, write_cell


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


def test_a_sweep_where_nothing_finished_still_gets_its_tables(tmp_path, monkeypatch, capsys):
    write_cell(tmp_path, "lora", 8, 0, status="failed", error="ValueError: the loss is NaN at step 3")
    write_cell(tmp_path, "qalora", 8, 0, status="skipped", error="qalora needs an integer quantizer")
    table(monkeypatch, tmp_path)
    assert "the loss is NaN at step 3" in (tmp_path / "tables" / "summary.md").read_text()
    assert "no cell finished" in (tmp_path / "tables" / "comparisons.md").read_text()
