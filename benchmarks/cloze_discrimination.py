"""Does austen_cloze tell quantizers apart, and how fast are lm-eval requests? Prints markdown tables; not a test.

1. austen_cloze on the embedded model in full precision and under each quantizer: accuracy (greedy continuation
   is the target word), the target word's perplexity, and each quantizer's accuracy difference from full precision
   with a 95% interval from a paired bootstrap over items (the same resampled items for both models).
2. Requests/s of lm-eval's own path (task_batch_size=1) against packed batches (the default 16), on
   austen_next_sentence (800 short multiple-choice requests) and on the first cloze items.

    .venv/bin/python benchmarks/cloze_discrimination.py [--quantizers int4 fp4_e3m0] [--batch-size 16]
        [--limit N] [--speed-docs 200] [--speed-cloze 200] [--skip-speed] [--items-dir DIR]

Per-item results are kept in --items-dir (one JSONL per configuration, named with the task data's hash) and
reused, so the ~10 minutes per configuration on 2 CPU cores can be spent in separate runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from harness.cli import register_configs
from harness.config import EXPERIMENTS_DIR, quantizer_config
from harness.device import resolve_compute_dtype
from harness.evaluation.cloze import TASK, ensure_cloze
from harness.evaluation.lm_eval_run import simple_evaluate_local
from harness.evaluation.tasks import resolve_tasks
from harness.models.quantize import quantize_model
from harness.models.sources import ModelConfig, load_model

BOOTSTRAP = 10_000  # resamples: the 2.5% / 97.5% percentiles move by < 0.001 between seeds at this count
CONTEXT = 1024  # eval's default context_length


def quantized(model, name: str):
    register_configs()
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        node = compose("eval", overrides=[f"+quantizer@quantizers.{name}={name}"]).quantizers[name]
    qcfg = quantizer_config(node)
    if qcfg.compute_dtype == "auto":  # as eval resolves it: bf16 only where native, else fp32 on a CPU
        qcfg.compute_dtype = resolve_compute_dtype("auto", torch.device("cpu"))
    model = copy.deepcopy(model)
    quantize_model(model, qcfg, module="auto")
    return model


def cloze_items(model, tokenizer, path: Path, batch_size: int, limit: int | None) -> list[dict]:
    """Per-item {"doc_id", "acc", "loglik"} of austen_cloze, from `path` when an earlier run left it there."""
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    start = time.perf_counter()
    out = simple_evaluate_local(model, tokenizer, resolve_tasks([TASK]), limit=limit, max_length=CONTEXT,
                                batch_size=batch_size, log_samples=True)
    items = sorted(({"doc_id": s["doc_id"], "acc": s["acc"], "loglik": s["perplexity"]}
                    for s in out["samples"][TASK]), key=lambda s: s["doc_id"])
    print(f"  {path.stem}: {len(items)} items in {time.perf_counter() - start:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return items


def bootstrap_interval(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def discrimination(model, tokenizer, args) -> None:
    data = ensure_cloze()
    print(f"{TASK}: {data.items} items, sha256 {data.sha256[:16]}..., {data.path}")
    tag = f"{data.sha256[:12]}-n{args.limit or data.items}"
    results = {}
    for label in ["full precision", *args.quantizers]:
        path = Path(args.items_dir) / f"{label.replace(' ', '_')}-{tag}.jsonl"
        needs_run = not path.is_file()
        m = quantized(model, label) if label != "full precision" and needs_run else model
        results[label] = cloze_items(m, tokenizer, path, args.batch_size, args.limit)
    print("\n| configuration | accuracy | target-word perplexity | items |\n|---|---:|---:|---:|")
    for label, items in results.items():
        acc = np.mean([i["acc"] for i in items])
        ppl = np.exp(-np.mean([i["loglik"] for i in items]))
        print(f"| {label} | {acc:.3f} | {ppl:.2f} | {len(items)} |")
    full = np.array([i["acc"] for i in results["full precision"]], dtype=float)
    print("\n| difference | accuracy | 95% bootstrap interval | excludes 0 |\n|---|---:|---:|---|")
    for label in args.quantizers:
        diff = full - np.array([i["acc"] for i in results[label]], dtype=float)
        low, high = bootstrap_interval(diff)
        print(f"| full precision - {label} | {diff.mean():+.3f} | [{low:+.3f}, {high:+.3f}] | "
              f"{'yes' if low > 0 or high < 0 else 'no'} |")


def speed(model, tokenizer, args) -> None:
    """Requests/s through the whole lm-eval task path (build requests, score, aggregate), batch 1 vs batched."""
    print("\n| task | requests | task_batch_size | seconds | requests/s | speed-up | result |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    for task, limit, per_doc, metric in [("austen_next_sentence", args.speed_docs, 4, "acc"),
                                         (TASK, args.speed_cloze, 1, "perplexity")]:
        base = None
        for batch_size in (1, args.batch_size):
            start = time.perf_counter()
            out = simple_evaluate_local(model, tokenizer, resolve_tasks([task]), limit=limit,
                                        max_length=CONTEXT, batch_size=batch_size)
            seconds = time.perf_counter() - start
            rate = limit * per_doc / seconds
            base = base or rate
            value = out["results"][task][f"{metric},none"]
            print(f"| {task} | {limit * per_doc} | {batch_size} | {seconds:.1f} | {rate:.1f} | "
                  f"{rate / base:.1f}x | {metric} {value:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantizers", nargs="*", default=["int4", "fp4_e3m0"], help="experiments/quantizer names")
    parser.add_argument("--batch-size", type=int, default=16, help="task_batch_size of the batched runs")
    parser.add_argument("--limit", type=int, default=None, help="first N cloze items only (default: all)")
    parser.add_argument("--speed-docs", type=int, default=200, help="austen_next_sentence items (4 requests each)")
    parser.add_argument("--speed-cloze", type=int, default=200, help="cloze items timed at both batch sizes")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-discrimination", action="store_true")
    parser.add_argument("--items-dir", default="results/cloze_discrimination")
    args = parser.parse_args()

    model, tokenizer = load_model(ModelConfig())
    print(f"model smollm2-135m (embedded), {torch.get_num_threads()} torch threads, context {CONTEXT}")
    if not args.skip_discrimination:
        discrimination(model, tokenizer, args)
    if not args.skip_speed:
        speed(model, tokenizer, args)


if __name__ == "__main__":
    main()
