"""harness.sweep.bases: work shared between cells is done once (one evaluation of the full-precision model and one of
the quantized base serve every cell)."""

from __future__ import annotations

import pandas as pd

from tests.sweep.conftest import values


def test_shared_work_is_done_once(ranks_sweep):
    # one evaluation of the full-precision model and one of the NF4 base (its perplexity, and its loss on the
    # held-out text forgetting is measured against) serve all five cells
    import json

    kinds = sorted(json.loads(p.read_text())["key"]["kind"] for p in (ranks_sweep / "bases").glob("*.json"))
    assert kinds == ["before", "extras", "reference"]
    table = values(ranks_sweep)
    assert table["perplexity_before"].nunique() == 1 and table["perplexity_full_precision"].nunique() == 1
    frame = pd.read_parquet(ranks_sweep / "results.parquet")
    assert frame[frame.metric == "forgetting_loss_before"].value.nunique() == 1
