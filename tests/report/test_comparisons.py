"""harness.report.comparisons: paired comparisons between distinct evaluations of a synthetic sweep, and what the
table says when the records hold no per-segment losses."""

from __future__ import annotations

import json

import pandas as pd

from harness.records import write_record
from tests.report.conftest import table


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
