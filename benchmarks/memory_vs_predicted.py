"""Predicted vs measured training memory, part by part, for the tiny models and the default model.

    .venv/bin/python benchmarks/memory_vs_predicted.py [--models tiny-llama tiny-opt smollm2-135m] [--steps 3]

Each model trains in its own process (nf4, LoRA r=8 on q,v, batch 4 x 128, fp32 compute, AdamW) through
`harness train`, whose metrics.csv holds the measured memory_<part>_bytes; the predictor sizes the same run on
the meta device. On the CPU the measured peak is the weights (from their tensors) plus the resident set's
growth during training. `harness train` keeps freed memory in the process while it trains (reuse_freed_memory:
faster steps), so the resident set's peak holds some dead blocks; the script also runs each model with
MALLOC_MMAP_THRESHOLD_=65536, which the harness then leaves alone (every large block returned when freed).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.memory.predictor import TENSOR_PARTS

MODELS = {"tiny-llama": {"name": "tiny-llama", "source": "tiny", "arch": "llama", "max_positions": 256},
          "tiny-opt": {"name": "tiny-opt", "source": "tiny", "arch": "opt", "max_positions": 256},
          "smollm2-135m": {"name": "smollm2-135m"}}


def measure(model: str, steps: int, env: dict) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="memory-"))
    cmd = [sys.executable, "-m", "harness", "train", f"model={model}", f"train.steps={steps}", "train.batch_size=4",
           "train.seq_len=128", "train.eval_tokens=256", "train.progress=false", "merge=false",
           "compute_dtype=float32", "device=cpu", f"output_dir={out}"]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    with open(out / "metrics.csv") as f:
        return {r["metric"]: float(r["value"]) for r in csv.DictReader(f)}


def predicted(model: str) -> dict[str, float]:
    import torch

    from harness.config import adapter_config, quantizer_config
    from harness.memory.predictor import Scenario, predict
    from harness.models.sources import model_config

    scenario = Scenario("run", quantizer_config({"name": "nf4"}), adapter_config({"name": "lora", "rank": 8}),
                        weight_bytes=4, precision="fp32")
    return predict(model_config(MODELS[model]), scenario, batch_size=4, seq_len=128, compute_dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    mb = 1e6
    print("| model | part | predicted MB | measured MB (harness default) | measured MB, MALLOC_MMAP_THRESHOLD_=65536 |")
    print("|---|---|---|---|---|")
    for model in args.models:
        pred = predicted(model)
        default = measure(model, args.steps, dict(os.environ))
        trimmed = measure(model, args.steps, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        for part in TENSOR_PARTS:
            key = f"memory_{part}_bytes"
            print(f"| {model} | {part} | {pred[part] / mb:.3f} | {default[key] / mb:.3f} | {trimmed[key] / mb:.3f} |")
        print(f"| {model} | activations vs rest | {pred['activations'] / mb:.1f} | "
              f"{default['memory_rest_bytes'] / mb:.1f} | {trimmed['memory_rest_bytes'] / mb:.1f} |")
        print(f"| {model} | **peak** | {pred['total'] / mb:.1f} | {default['peak_memory_bytes'] / mb:.1f} | "
              f"{trimmed['peak_memory_bytes'] / mb:.1f} |")


if __name__ == "__main__":
    main()
