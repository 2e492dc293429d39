"""harness.training.run: a run's output contract, an evaluation-only run, checks before any model is loaded, and
AdaLoRA's final ranks in run.json."""

import csv
import json

import pytest

from adapters.base import IncompatibleError
from harness.training import run as training_run
from harness.training.plan import plan
from tests.training.conftest import config

REQUIRED_METRICS = {"perplexity_before", "perplexity_after", "perplexity_merged", "loss_first", "loss_last",
                    "trainable_params", "total_params", "train_tokens", "train_tokens_per_second",
                    "peak_memory_bytes", "seconds"}


def test_a_run_writes_the_output_contract(text_file, tmp_path):
    metrics = training_run.run(config(text_file, tmp_path))
    out = tmp_path / "run"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= REQUIRED_METRICS
    assert {r["metric"]: float(r["value"]) for r in rows} == pytest.approx(metrics)
    with open(out / "loss.csv") as f:
        losses = list(csv.DictReader(f))
    assert list(losses[0]) == ["step", "loss", "lr", "tokens_per_second", "memory_bytes",
                               "memory_reserved_bytes"] and len(losses) == 4
    assert float(losses[0]["loss"]) == metrics["loss_first"] and float(losses[-1]["loss"]) == metrics["loss_last"]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["resolved"]["device"] == "cpu" and meta["resolved"]["compute_dtype"] == "float32"
    assert meta["command"] == "train" and meta["git_commit"]
    # 4 steps of 2 x 32 tokens; the trainable share is PEFT's count
    assert metrics["train_tokens"] == 4 * 2 * 32
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    # the lr is 1e-2 on a random model: training on the corpus must lower the validation perplexity
    assert metrics["perplexity_after"] < metrics["perplexity_before"]


def test_a_run_records_what_peft_method_comparison_records(text_file, tmp_path):
    """Adapter file size, memory over the steps (mean, max, 99th percentile), train and eval seconds apart, the
    median tokens/s, and forgetting. Forgetting measured on the evaluation text itself (validation, as many
    tokens) must be the log of the perplexities: the same model, text and windows."""
    import math

    import numpy as np

    metrics = training_run.run(config(text_file, tmp_path, forgetting_split="validation", forgetting_tokens=256))
    out = tmp_path / "run"
    assert metrics["adapter_file_bytes"] == (out / "adapter" / "adapter_model.safetensors").stat().st_size
    with open(out / "loss.csv") as f:
        steps = list(csv.DictReader(f))
    memory = np.array([float(r["memory_bytes"]) for r in steps])
    assert metrics["memory_avg_bytes"] == pytest.approx(memory.mean())  # float rounding of the mean only
    assert metrics["memory_max_bytes"] == memory.max()
    assert memory.mean() <= metrics["memory_99th_bytes"] <= memory.max() or np.ptp(memory) == 0
    # the step samples are taken between steps, the peak also inside them (weights + resident growth both)
    assert 0 < metrics["memory_max_bytes"] <= metrics["peak_memory_bytes"]
    assert metrics["train_tokens_per_second_median"] == np.median([float(r["tokens_per_second"]) for r in steps])
    assert metrics["train_seconds"] > 0 and metrics["eval_seconds"] > 0
    assert metrics["train_seconds"] + metrics["eval_seconds"] < metrics["seconds"]  # apart, and both in the run
    # nll is the mean over the same scored tokens perplexity exponentiates: equal up to exp/log rounding
    for stage in ("before", "after", "merged"):
        assert metrics[f"forgetting_loss_{stage}"] == pytest.approx(math.log(metrics[f"perplexity_{stage}"]),
                                                                    rel=1e-12)
    assert metrics["forgetting"] == metrics["forgetting_loss_after"] - metrics["forgetting_loss_before"]
    assert metrics["forgetting_merged"] == metrics["forgetting_loss_merged"] - metrics["forgetting_loss_before"]


def test_forgetting_defaults_to_the_split_neither_trained_nor_evaluated_and_reads_a_file_if_given(text_file,
                                                                                                  tmp_path):
    from harness.training.stages import forgetting_split

    assert forgetting_split(plan(config(text_file, tmp_path))) == "test"
    assert forgetting_split(plan(config(text_file, tmp_path, eval_split="test"))) == "validation"
    general = tmp_path / "general.txt"
    general.write_text("An unrelated text about ships, weather and harbours. " * 40)
    metrics = training_run.run(config(text_file, tmp_path, forgetting_path=str(general), forgetting_tokens=128))
    assert {"forgetting", "forgetting_loss_before"} <= metrics.keys()
    with pytest.raises(FileNotFoundError, match=r"train.forgetting_path='/nonexistent.txt' is not a file"):
        config(text_file, tmp_path, forgetting_path="/nonexistent.txt")
    off = training_run.run(config(text_file, tmp_path / "off", forgetting_tokens=0))
    assert not any(k.startswith("forgetting") for k in off)


def test_zero_steps_evaluates_the_quantized_base_only(text_file, tmp_path):
    trained = training_run.run(config(text_file, tmp_path / "a", steps=1))
    metrics = training_run.run(config(text_file, tmp_path / "b", steps=0))
    assert "perplexity_after" not in metrics and "train_seconds" not in metrics
    # the same seed, base and text: the base's perplexity is the one a trained run starts from, bit for bit
    assert metrics["perplexity_before"] == trained["perplexity_before"]
    assert metrics["weight_sqnr_db"] == trained["weight_sqnr_db"] and metrics["bits_per_param"] > 4


def test_an_incompatible_pair_is_rejected_before_any_model_is_loaded(text_file, tmp_path, monkeypatch):
    def no_loading(*_):
        raise AssertionError("a model was loaded before the configs were checked")

    monkeypatch.setattr("harness.models.sources.load_model", no_loading)
    cfg = config(text_file, tmp_path, adapter={"name": "qalora", "rank": 4})
    with pytest.raises(IncompatibleError, match="intk"):
        training_run.run(cfg)
    with pytest.raises(IncompatibleError, match="module=harness"):
        plan(config(text_file, tmp_path, adapter={"name": "loha"}, module="bitsandbytes"))


def test_adalora_records_the_final_rank_of_every_layer(text_file, tmp_path):
    adapter = {"name": "adalora", "rank": 2, "init_r": 4, "tinit": 1, "tfinal": 1, "targets": ["q_proj", "v_proj"]}
    training_run.run(config(text_file, tmp_path, adapter=adapter, steps=6))
    ranks = json.loads((tmp_path / "run" / "run.json").read_text())["resolved"]["final_ranks"]
    assert len(ranks) == 4  # 2 layers x (q_proj, v_proj)
    assert all(0 <= r <= 4 for r in ranks.values()) and sum(ranks.values()) < 4 * 4


def test_tasks_are_scored_after_training_and_after_merging(text_file, tmp_path):
    """train.tasks through lm-eval's real task machinery (a local multiple-choice task), after fine-tuning and
    after merging. QA-LoRA's merge is exact up to fp32 rounding (merged logits within ~3e-7 of the unmerged
    ones), so on the same items the merged model must choose as the fine-tuned one did: the same accuracies."""
    cfg = config(text_file, tmp_path, quantizer={"name": "intk", "bits": 4, "group_size": 32},
                 adapter={"name": "qalora", "rank": 4, "targets": ["all-linear"]},
                 tasks=["austen_next_sentence"], task_limit=8, task_batch_size=4)
    metrics = training_run.run(cfg)
    task = "austen_next_sentence"
    for metric in ("acc", "acc_norm"):
        after, merged = metrics[f"{task}/{metric}_after"], metrics[f"{task}/{metric}_merged"]
        assert after in {i / 8 for i in range(9)}  # a share of the 8 items
        assert merged == after
    assert metrics[f"{task}/sample_len_after"] == 8
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert f"{task}/acc_merged" in {r["metric"] for r in csv.DictReader(f)}
    # before fine-tuning too; each stage's per-item answers kept, their mean the stage's score
    assert metrics[f"{task}/acc_before"] in {i / 8 for i in range(9)}
    items = json.loads((tmp_path / "run" / "items.json").read_text())[task]
    assert items["doc_id"] == list(range(8)) and len(items["key"]) == 64  # sha256 of the items' doc hashes
    for stage in ("before", "after", "merged"):
        for metric in ("acc", "acc_norm"):
            assert sum(items[stage][metric]) / 8 == metrics[f"{task}/{metric}_{stage}"]


def test_an_unknown_task_stops_the_run_before_the_model_is_loaded(text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(training_run, "build_model", lambda p: pytest.fail("loaded the model first"))
    with pytest.raises(ValueError, match="austen_clozee"):
        training_run.run(config(text_file, tmp_path, tasks=["austen_clozee"]))
