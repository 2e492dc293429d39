"""4-bit NF4 LoRA against 16-bit LoRA on a GPU: tokens/s, peak memory, and the predictor's error, part by part.

    .venv/bin/python benchmarks/gpu_qlora.py                            # CUDA; the default model, ~2 min on one GPU
    .venv/bin/python benchmarks/gpu_qlora.py --model tiny-llama --device cpu --steps 3   # the plumbing, anywhere

Two scenarios, each `python -m harness train` in its own process (so each CUDA peak is its own; merge=false,
bf16 compute, LoRA on --targets at --rank, --steps steps of --batch-size x --seq-len, train.eval_tokens=256):
  bf16-lora    the unquantized base in bf16 (quantizer=none)
  nf4-dq-lora  NF4 + double quantization in bitsandbytes' Linear4bit (module=bitsandbytes), QLoRA's setting
tokens/s leave out the first step (it allocates the optimizer state): (steps - 1) x tokens per step / (train
seconds - the first step's seconds, from loss.csv). Memory: metrics.csv's memory_<part>_bytes and
peak_memory_bytes (CUDA max_memory_allocated during training; reserved beside it) against
harness.memory.predictor.predict for the same run on the meta device: the frozen weights 2 bytes (bf16), the LoRA
weights in fp32 (PEFT keeps adapters of a 16-bit base in fp32), the optimizer the run resolved (paged AdamW
32-bit on CUDA, AdamW on the CPU). Targets (the memory-and-speed issue): NF4 LoRA at least 0.8x bf16 LoRA's
tokens/s (the QLoRA authors report roughly on par, one public benchmark 0.56x); every part within 10% on a GPU.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.memory.predictor import TENSOR_PARTS

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {  # label -> harness train overrides
    "bf16-lora": ["quantizer=none"],
    "nf4-dq-lora": ["quantizer=nf4", "quantizer.double_quant=true", "module=bitsandbytes"],
}
MB = 1e6


def train(label: str, args) -> dict:
    """One scenario through `python -m harness train` -> its metrics, with tokens/s after the first step."""
    out = Path(tempfile.mkdtemp(prefix=f"gpu-qlora-{label}-"))
    cmd = [sys.executable, "-m", "harness", "train", f"model={args.model}", *SCENARIOS[label],
           f"adapter.rank={args.rank}", f"adapter.targets=[{','.join(args.targets)}]", "compute_dtype=bfloat16",
           f"device={args.device}", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
           f"train.seq_len={args.seq_len}", "train.eval_tokens=256", "train.progress=false", "merge=false",
           f"output_dir={out}", *args.override]
    done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{label}: harness train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(out / "metrics.csv") as f:
        metrics = {r["metric"]: float(r["value"]) for r in csv.DictReader(f)}
    with open(out / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    tokens = args.batch_size * args.seq_len
    first = tokens / float(rows[0]["tokens_per_second"])
    metrics["tokens_per_second"] = tokens * (args.steps - 1) / (metrics["train_seconds"] - first)
    return {"metrics": metrics}


def predicted(label: str, args, device: str) -> dict[str, float]:
    import torch
    from omegaconf import OmegaConf

    from harness.config import adapter_config, quantizer_config
    from harness.memory.predictor import Scenario, predict
    from harness.models.sources import model_config
    from harness.training.config import resolve_optimizer

    node = OmegaConf.to_container(OmegaConf.load(ROOT / "experiments" / "model" / f"{args.model}.yaml"))
    node.pop("defaults", None)
    for item in args.override:  # model.* overrides size the same model the runs trained (e.g. model.path)
        key, _, value = item.partition("=")
        if key.startswith("model."):
            node[key.removeprefix("model.")] = value
    quantizer = None
    if label == "nf4-dq-lora":
        quantizer = quantizer_config({"name": "nf4", "double_quant": True, "compute_dtype": "bfloat16"})
    adapter = adapter_config({"name": "lora", "rank": args.rank, "targets": args.targets})
    optimizer = resolve_optimizer("auto", torch.device(device))
    scenario = Scenario(label, quantizer, adapter, weight_bytes=2, precision="fp32", optimizer=optimizer)
    return predict(model_config(node), scenario, batch_size=args.batch_size, seq_len=args.seq_len,
                   compute_dtype=torch.bfloat16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a name from experiments/model/")
    parser.add_argument("--device", default="cuda", help="cuda (the point of it) or cpu (to try the plumbing)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps, the first one untimed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["all-linear"], help="LoRA targets (default: all-linear)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more `harness train` overrides for both scenarios, e.g. model.source=local "
                             "model.path=<folder> where the embedded model's package is not installed")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is the warm-up")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; this benchmark is for a GPU (--device cpu runs it on the CPU, where "
                         "the peak is a resident set and benchmarks/memory_vs_predicted.py says more)")
    runs = {label: train(label, args) for label in SCENARIOS}
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"# {args.model} on {name}, LoRA r={args.rank} on {args.targets}, bf16 compute, batch {args.batch_size} x "
          f"{args.seq_len}, {args.steps} steps (first untimed); MB = 1e6 bytes\n")
    print("| scenario | tokens/s | vs bf16 LoRA | peak MB: measured / predicted | error | reserved MB |\n"
          "|---|---:|---:|---:|---:|---:|")
    base = runs["bf16-lora"]["metrics"]["tokens_per_second"]
    preds = {label: predicted(label, args, args.device) for label in SCENARIOS}
    for label, run in runs.items():
        m, pred = run["metrics"], preds[label]
        peak = m["peak_memory_bytes"]
        print(f"| {label} | {m['tokens_per_second']:.0f} | {m['tokens_per_second'] / base:.2f} | "
              f"{peak / MB:.1f} / {pred['total'] / MB:.1f} | {pred['total'] / peak - 1:+.1%} | "
              f"{m['peak_memory_reserved_bytes'] / MB:.1f} |")
    print("\n| scenario | part | measured MB | predicted MB | error |\n|---|---|---:|---:|---:|")
    for label, run in runs.items():
        m, pred = run["metrics"], preds[label]
        rows = [(part, m[f"memory_{part}_bytes"], pred[part]) for part in TENSOR_PARTS]
        rows.append(("activations vs rest", m["memory_rest_bytes"], pred["activations"]))
        for part, measured, expected in rows:
            error = f"{expected / measured - 1:+.1%}" if measured else "n/a"
            print(f"| {label} | {part} | {measured / MB:.3f} | {expected / MB:.3f} | {error} |")
    print(f"\nNF4 + DQ LoRA / bf16 LoRA tokens/s: {runs['nf4-dq-lora']['metrics']['tokens_per_second'] / base:.2f} "
          "(target >= 0.8)")


if __name__ == "__main__":
    main()
