"""harness.sweep.papers: paper reproductions run through the sweep: each composes and runs end to end on the tiny
model, writes its table beside the published figures, and states its claims; the claim logic itself on hand-made
records."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.sweep.papers import SweepPaper, merge_table
from tests.sweep.conftest import CORPUS, TINY, sweep_here

PAPERS = {"lora_table6": 15, "qa_lora_merge": 6, "qlora_table2_sweep": 5}  # paper -> its number of cells


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_paper_sweep_runs_on_the_tiny_model_and_writes_the_published_column(paper, tmp_path):
    overrides = TINY if paper != "qlora_table2_sweep" else [o for o in TINY if not o.startswith("train.steps")]
    overrides = [*overrides, *CORPUS]
    proc = sweep_here(f"+paper={paper}", *overrides, out=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = (tmp_path / "paper.md").read_text()
    table = pd.read_csv(tmp_path / "paper.csv")
    assert "## Claims" in text and "Published:" in text
    assert any(c.startswith("published") for c in table.columns) or table["figure"].str.startswith("published").any()
    assert len(pd.read_csv(tmp_path / "results.csv").cell.unique()) == PAPERS[paper]


def record(adapter: str, bits: int, after: float, merged: float) -> dict:
    """A finished qa_lora_merge cell whose 4 segments of 100 tokens give exactly `after` and `merged` with a
    shared per-segment noise (so the pairing matters)."""
    import math

    noise = [0.3, -0.1, 0.2, -0.4]
    def losses(ppl):
        return {"nll": [100 * math.log(ppl) + n for n in noise], "tokens": [100] * 4}
    return {"cell": {"adapter": adapter}, "resolved": {"quantizer": {"bits": bits}},
            "metrics": {"perplexity_before": after + 1, "perplexity_after": after, "perplexity_merged": merged,
                        "merged_quantized_share": 1.0},
            "losses": {"text": "t", "after": losses(after), "merged": losses(merged)}}


def test_merge_claims_follow_the_numbers():
    paper = SweepPaper(kind="merge", published={"lora": {"4": 36.0}})
    records = [record("lora", 4, 30.0, 30.5), record("lora", 2, 40.0, 42.0),
               record("qalora", 4, 30.0, 30.0), record("qalora", 2, 40.0, 40.0)]
    table, claims = merge_table(records, paper)
    assert table.loc[table.method == "lora", "published"].tolist()[0] == 36.0
    assert claims[0].endswith("holds") and "no loss" in claims[0]  # QA-LoRA: merged == after
    assert claims[1].endswith("holds")  # LoRA loses at both widths, and the noise is paired away
    assert claims[2].endswith("holds")  # 2-bit loses 2.0 > 4-bit 0.5
    records[1] = record("lora", 2, 40.0, 40.2)  # now the 2-bit loss (0.2) is below the 4-bit one (0.5)
    assert merge_table(records, paper)[1][2].endswith("does not hold")
