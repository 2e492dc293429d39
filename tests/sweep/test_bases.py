"""harness.sweep.bases: work shared between cells is done once (one evaluation of the full-precision model and one of
the quantized base serve every cell)."""

from __future__ import annotations

from tests.sweep.conftest import values


def test_shared_work_is_done_once(ranks_sweep):
    # one evaluation of the full-precision model and one of the NF4 base serve all five cells
    assert len(list((ranks_sweep / "bases").glob("*.json"))) == 2
    table = values(ranks_sweep)
    assert table["perplexity_before"].nunique() == 1 and table["perplexity_full_precision"].nunique() == 1
