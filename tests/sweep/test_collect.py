"""harness.sweep.collect: the tidy table has a row per cell and metric, and keeps the cells without metrics."""

from __future__ import annotations

import pandas as pd

from harness.sweep.collect import tidy


def test_tidy_has_a_row_per_cell_and_metric_and_keeps_cells_without_metrics():
    describe = {"model": "m", "quantizer": "nf4", "adapter": "lora", "targets": "q_proj", "seed": 0, "steps": 2,
                "lr": 0.001}
    records = [
        {"config_hash": "a", "status": "ok", "overrides": ["adapter.rank=4", "quantizer.block_size=64"],
         "cell": describe | {"rank": 4}, "metrics": {"perplexity_after": 10.0, "loss_last": 2.0}},
        {"config_hash": "b", "status": "skipped", "error": "no", "overrides": ["adapter=qalora"],
         "cell": describe | {"adapter": "qalora", "rank": 8}, "metrics": {}},
    ]
    frame = tidy(records)
    assert len(frame) == 3 and list(frame.metric[:2]) == ["perplexity_after", "loss_last"]
    assert frame["quantizer.block_size"].iloc[0] == 64  # a swept number is a number column
    assert "adapter.rank" not in frame.columns  # it is the `rank` column
    assert frame.loc[2, "status"] == "skipped" and pd.isna(frame.loc[2, "value"])
