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


def stages(**ppl) -> dict:
    """Per-segment losses of each named stage: 4 segments of 100 tokens giving exactly that perplexity, with the
    same per-segment noise in every stage (so a paired comparison sees the difference alone)."""
    import math

    noise = [0.3, -0.1, 0.2, -0.4]
    return {"text": "t", **{stage: {"nll": [100 * math.log(p) + n for n in noise], "tokens": [100] * 4}
                            for stage, p in ppl.items()}}


def method_record(method: str, bits: int, before: float, after: float, adapter: str = "lora",
                  merged: float | None = None) -> dict:
    quantizer = {"name": method} if method == "nf4" else {"name": method, "bits": bits}
    merged = after if merged is None else merged
    return {"cell": {"adapter": adapter}, "resolved": {"quantizer": quantizer},
            "metrics": {"perplexity_full_precision": 30.0, "perplexity_before": before, "perplexity_after": after,
                        "perplexity_merged": merged, "merged_quantized_share": 1.0},
            "losses": stages(before=before, after=after, merged=merged)}


def test_methods_claims_follow_the_numbers():
    from harness.sweep.papers_methods import methods_table

    paper = SweepPaper(kind="methods", labels={"gptq": "GPTQ", "opt": "published OPT"},
                       published={"opt": {"full": 27.65, "gptq4": 31.12}})
    records = [method_record("intk", 4, 40.0, 35.0), method_record("gptq", 4, 38.0, 34.0),
               method_record("hqq", 4, 39.0, 34.5), method_record("nf4", 4, 39.5, 34.8),
               method_record("intk", 3, 60.0, 45.0), method_record("gptq", 3, 45.0, 40.0)]
    table, claims = methods_table(records, paper)
    assert table.loc[(table.method == "GPTQ") & (table.bits == 4), "published OPT"].item() == 31.12
    assert table.loc[(table.method == "GPTQ") & (table.bits == 3), "published OPT"].isna().all()  # not published
    assert table.loc[table.method == "full precision", "published OPT"].item() == 27.65
    assert list(table.method[1:5]) == ["intk", "nf4", "GPTQ", "hqq"]  # RTN, NF4, GPTQ, ..., HQQ within 4 bits
    text = "\n".join(claims)
    assert "GPTQ beats round-to-nearest at 4 bits" in text and "at 3 bits" in text
    assert all(c.split(":")[-1].strip().startswith("holds") or "holds," in c for c in claims), claims
    assert any("widens" in c and "holds" in c and "2.000 -> 15.000" in c for c in claims)
    records[-1] = method_record("gptq", 3, 61.0, 40.0)  # now GPTQ loses to RTN at 3 bits
    claims = methods_table(records, paper)[1]
    assert any("at 3 bits" in c and "does not hold" in c for c in claims)
    assert any("widens" in c and "does not hold" in c for c in claims)


def test_table1_claims_follow_the_numbers():
    from harness.sweep.papers_methods import table1

    paper = SweepPaper(kind="table1", published={"qalora_gptq": {"4": 39.4}, "qlora_gptq": {"4": 36.0}},
                       labels={"qalora_gptq": "QA-LoRA (GPTQ)"})
    records = [method_record("nf4", 4, 40.0, 35.0, merged=35.5),
               method_record("gptq", 4, 39.0, 34.0, merged=34.6), method_record("gptq", 2, 80.0, 60.0, merged=70.0),
               method_record("gptq", 4, 39.0, 34.2, "qalora"), method_record("gptq", 2, 80.0, 61.0, "qalora")]
    table, claims = table1(records, paper)
    assert table.loc[table.method == "QA-LoRA (GPTQ)", "published MMLU"].tolist()[0] == 39.4
    assert set(table.method) == {"qlora", "qlora_gptq", "QA-LoRA (GPTQ)"}
    assert claims[0].startswith("QA-LoRA's merged model keeps") and claims[0].endswith("holds")
    assert "does not (merged worse than after" in claims[1] and claims[1].endswith("holds")
    assert [c.split(" (paper")[0] for c in claims[2:]] == ["merged, QA-LoRA beats QLoRA w/ GPTQ at 4 bits",
                                                           "merged, QA-LoRA beats QLoRA w/ GPTQ at 2 bits"]
    assert all("holds," in c for c in claims[2:])
    records[3] = method_record("gptq", 4, 39.0, 34.2, "qalora", merged=34.9)  # QA-LoRA's merge now loses
    claims = table1(records, paper)[1]
    assert claims[0].endswith("does not hold") and "does not hold" in claims[2]


def test_qa_lora_table1_on_a_calibrated_gptq_base_runs_through_the_sweep(tmp_path):
    """The paper's GPTQ cells end to end on the tiny model (quantizer=... replaces the sweep's quantizer axis, so the
    calibration overrides apply to GPTQ alone): the calibrated base is cached once under model.cache_dir, every record
    carries what calibrating cost and bought, and QA-LoRA's merge into GPTQ's zero points keeps its perplexity."""
    import json

    out, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = sweep_here("+paper=qa_lora_table1", *TINY, *CORPUS, "quantizer=gptq2_g64", "quantizer.calibration.samples=4",
                      "quantizer.calibration.seq_len=32", f"model.cache_dir={cache}", "train.task_limit=8", out=out,
                      check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(list((cache / "calibrated").glob("*.pt"))) == 1
    records = [json.loads(p.read_text()) for p in out.glob("cells/*/record.json")]
    assert sorted(r["cell"]["adapter"] for r in records) == ["lora", "qalora"]
    for r in records:
        m = r["metrics"]
        assert m["quantize_seconds"] > 0 and m["quantize_peak_memory_bytes"] > 0
        assert m["layer_output_error"] < m["layer_output_error_rtn"] and m["layers_worse_than_rtn"] == 0
        assert r["resolved"]["quantizer"]["calibration"] == {"samples": 4, "seq_len": 32, "split": "train", "seed": 0}
        assert {"austen_cloze/acc_after", "austen_cloze/acc_merged"} <= m.keys()  # the paper's train.tasks
    text = (out / "paper.md").read_text()
    assert "- QA-LoRA's merged model keeps its fine-tuned quality" in text and "2 bits): holds" in text
    assert "austen_cloze acc merged" in text and "QA-LoRA's merged model answers as the fine-tuned one did" in text
