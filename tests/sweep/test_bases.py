"""harness.sweep.bases: work shared between cells is done once (one evaluation of the full-precision model and one of
the quantized base serve every cell); a damaged cached evaluation is named and computed again."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import records
from harness.evaluation.perplexity import PerplexityResult
from harness.sweep.bases import cached
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


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (b'{"key": {}, "val', "not JSON (Unterminated string starting at: line 1 column 13)"),
    (b'{"key": {}}', "missing field value"),
    (b'{"key": {}, "value": {"perplexity": 3.0}}',
     "value not an evaluation (TypeError: "),  # then Python's words for the missing arguments
])
def test_a_damaged_base_evaluation_is_named_and_computed_again(tmp_path, monkeypatch, capsys, content, reason):
    monkeypatch.setattr(records, "_SAID", set())  # as in a fresh process
    result = PerplexityResult(perplexity=20.0, nll=3.0, tokens=256, seconds=1.0, tokens_per_second=256.0,
                              context_length=64, stride=64, segment_nll=[384.0, 384.0], segment_tokens=[128, 128])
    computed = []

    def compute():
        computed.append(1)
        return result

    assert cached(tmp_path, {"kind": "before"}, compute) == result
    (path,) = (tmp_path / "bases").glob("*.json")
    path.write_bytes(content)  # truncated by a full disk, emptied, or edited by hand
    assert cached(tmp_path, {"kind": "before"}, compute) == result
    assert cached(tmp_path, {"kind": "before"}, compute) == result  # read back: the rewritten file is whole
    assert len(computed) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bases/{path.name} is damaged ({reason}") and err.endswith("); computed again\n")
    assert err.count("\n") == 1  # one line
