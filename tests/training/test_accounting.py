"""harness.training.accounting: a train run reports every memory part, and the parts counted from tensors match the
memory predictor's to the byte."""

import csv

import torch

from harness.config import adapter_config, quantizer_config
from harness.memory.predictor import Scenario, predict
from harness.models.sources import model_config

TINY = {"name": "tiny-llama", "source": "tiny", "arch": "llama"}


def test_a_train_run_reports_every_memory_part_and_the_predictor_matches_its_tensors(tmp_path):
    from harness.training.config import TrainConfig, TrainSettings
    from harness.training.run import run

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"paragraph {i} " + "some words to train on " * 40 for i in range(40)))
    metrics = run(TrainConfig(model=TINY, data={"name": "text_file", "path": str(text)}, quantizer={"name": "nf4"},
                              adapter={"name": "lora", "rank": 4}, device="cpu", compute_dtype="float32",
                              train=TrainSettings(steps=2, batch_size=2, seq_len=32, eval_tokens=128, eval_context=64,
                                                  progress=False), output_dir=str(tmp_path / "run"), merge=False))
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = {r["metric"]: float(r["value"]) for r in csv.DictReader(f)}
    parts = ["quantized_weights", "other_weights", "adapter_weights", "gradients", "optimizer", "rest"]
    assert all(f"memory_{p}_bytes" in rows for p in parts)
    assert sum(rows[f"memory_{p}_bytes"] for p in parts) == rows["peak_memory_bytes"]
    predicted = predict(model_config(TINY), Scenario("run", quantizer_config({"name": "nf4"}),
                        adapter_config({"name": "lora", "rank": 4}), weight_bytes=4, precision="fp32"),
                        batch_size=2, seq_len=32, compute_dtype=torch.float32)
    # every part but the activations is counted from tensors of known size on both sides: exact
    for part in ("quantized_weights", "other_weights", "adapter_weights", "gradients", "optimizer"):
        assert predicted[part] == rows[f"memory_{part}_bytes"], part
