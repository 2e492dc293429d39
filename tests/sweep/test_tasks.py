"""train.tasks in a sweep: accuracy before / after / merged in every cell with the full-precision and quantized
bases' scores shared, per-item results kept for paired comparisons, the task tables and figure, and every cell
exported as a PEFT method-comparison result file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import harness_here
from tests.sweep.conftest import CORPUS, TINY, sweep_here

TASK = "austen_next_sentence"
# the items are longer than TINY's 128 positions in the byte tokenizer: 512 lets every item fit whole
TASKS = [f"train.tasks=[{TASK}]", "train.task_limit=8", "train.task_batch_size=4", "model.max_positions=512"]


@pytest.fixture(scope="module")
def task_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    sweep_here("adapter.rank=2,8", *TINY, *CORPUS, *TASKS, "train.lr=1e-2", out=out)
    return out


def test_every_cell_scores_its_tasks_at_every_stage_on_the_same_items(task_sweep):
    records = [json.loads(p.read_text()) for p in sorted(task_sweep.glob("cells/*/record.json"))]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    for record in records:
        m, items = record["metrics"], record["items"][TASK]
        for stage in ("full_precision", "before", "after", "merged"):
            # the score is the mean of the kept per-item answers, for every stage
            assert sum(items[stage]["acc"]) / 8 == m[f"{TASK}/acc_{stage}"]
        assert items["doc_id"] == list(range(8))
    # the bases are shared: the full-precision and quantized base's answers are the same in both cells
    first, second = (r["items"][TASK] for r in records)
    assert first["key"] == second["key"]
    assert first["full_precision"] == second["full_precision"] and first["before"] == second["before"]
    shared = [json.loads(p.read_text()) for p in task_sweep.glob("bases/*.json")]
    kinds = [b["key"].get("kind") for b in shared]
    # one reference perplexity, one base perplexity; one set of task scores for each model (the before one
    # holds the held-out loss too): computed once for the two cells
    assert sorted(kinds) == ["before", "extras", "extras", "reference"]


def test_task_tables_pair_the_same_items_and_the_figure_is_drawn(task_sweep):
    tasks_md = (task_sweep / "tables" / "tasks.md").read_text()
    assert "item-level 95% bootstrap interval" in tasks_md
    summary = pd.read_csv(task_sweep / "tables" / "tasks.csv")
    assert set(summary["rank"]) == {2, 8} and set(summary.metric) >= {"acc", "acc_norm"}
    records = {json.loads(p.read_text())["cell"]["rank"]: json.loads(p.read_text())
               for p in task_sweep.glob("cells/*/record.json")}
    row = summary[(summary["rank"] == 8) & (summary.metric == "acc")].iloc[0]
    assert row["after"] == records[8]["metrics"][f"{TASK}/acc_after"]
    assert row["after_low"] <= row["after"] <= row["after_high"]
    pairs = pd.read_csv(task_sweep / "tables" / "task_comparisons.csv")
    within = pairs[(pairs.stage == "after − before") & (pairs.metric == "acc")]
    assert len(within) == 2  # one per configuration
    for _, pair in within.iterrows():
        rank = 2 if pair.a.startswith("rank=2") else 8
        m = records[rank]["metrics"]
        # the paired difference is the difference of the two scores on the same 8 items
        assert pair["diff"] == pytest.approx(m[f"{TASK}/acc_after"] - m[f"{TASK}/acc_before"], abs=1e-12)
    assert (task_sweep / "figures" / "task_accuracy_vs_rank.png").is_file()
    assert "tables/tasks.md" in (task_sweep / "report.md").read_text()


def test_export_peft_writes_one_method_comparison_file_per_cell(task_sweep):
    proc = harness_here("export-peft", task_sweep)
    assert proc.returncode == 0, proc.stderr
    files = sorted((task_sweep / "peft").glob("*.json"))
    assert len(files) == 2
    for path in files:
        result = json.loads(path.read_text())
        record = json.loads((task_sweep / "cells" / result["harness"]["config_hash"] / "record.json").read_text())
        m, info = record["metrics"], result["train_info"]
        assert path.name.startswith("lora--") and result["run_info"]["experiment_name"].startswith("lora/")
        assert info["status"] == "success" and info["file_size"] == m["adapter_file_bytes"]
        assert info["train_time"] == m["train_seconds"] and info["num_trainable_params"] == m["trainable_params"]
        assert info["accelerator_memory_reserved_99th"] == round(m["memory_reserved_99th_bytes"]) or \
            info["accelerator_memory_reserved_99th"] == m["memory_reserved_99th_bytes"]
        steps, final = info["metrics"][:-1], info["metrics"][-1]
        assert [s["step"] for s in steps] == [0, 1]  # loss.csv's two steps, then the test evaluation
        assert final["test accuracy"] == m[f"{TASK}/acc_after"] and final["forgetting"] == m["forgetting"]
        assert result["run_info"]["peft_config"]["peft_type"] == "LORA"
        assert set(result["meta_info"]["system_info"]) == {"system", "release", "version", "machine", "processor",
                                                           "accelerator"}
        assert result["meta_info"]["package_info"]["peft-version"] == record["versions"]["peft"]
