"""`python -m harness train`: one fine-tuning loop for every adapter on every quantized base.

A run: check the configs (adapter x quantizer compatibility included) -> load the model -> quantize ->
attach the adapter -> perplexity before -> train -> perplexity after -> save the adapter (PEFT's format) ->
merge -> perplexity merged -> metrics.csv, loss.csv, run.json. Nothing is loaded before the configs pass.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from adapters import base as adapters
from harness.config import quantizer_label
from harness.measure import PeakMemory, memory_in_use, release_freed_memory, reuse_freed_memory
from harness.records import write_run_json
from harness.training.accounting import memory_rows, quantized_share, step_memory, training_peak, weight_bytes
from harness.training.config import TrainConfig
from harness.training.loop import fine_tune
from harness.training.plan import Plan, build_model, data_for, plan
from harness.training.stages import Evaluator, forgetting_metrics, merge_items


def run(cfg: TrainConfig) -> dict[str, float]:
    """Fine-tune as configured; write DIR/metrics.csv, loss.csv, adapter/, run.json (and items.json with
    train.tasks); return the metrics."""
    started = time.perf_counter()
    p = plan(cfg)
    print(f"train: {p.model.name}, quantizer {quantizer_label(p.quantizer)} on {p.layer_kind} layers, adapter "
          f"{p.adapter.name} r={p.adapter.rank}, device {p.device}, compute {p.compute_dtype} -> {p.output_dir}")
    model, tokenizer, report = build_model(p)
    blocks, ids = data_for(p, tokenizer)
    evaluator = Evaluator(p, tokenizer, ids)
    before = evaluator.perplexity(model)
    print(f"  perplexity before {before.perplexity:.3f} ({ids.numel()} {p.train.eval_split} tokens)")
    extras = evaluator.extras(model, "before")
    if p.train.steps == 0:
        metrics, rows, items = base_metrics(p, report, before) | extras["metrics"], [], extras["items"]
        metrics["eval_seconds"] = evaluator.seconds
    else:
        metrics, rows, _, items = train_and_evaluate(p, model, tokenizer, report, blocks, before, cfg.merge,
                                                     evaluator, extras)
    metrics["seconds"] = time.perf_counter() - started
    write_outputs(p, cfg, metrics, rows, p.adapter.report(model), items)
    return metrics


def base_metrics(p: Plan, report, before) -> dict[str, float]:
    """What a run with train.steps=0 reports: the quantized base's perplexity, its bits and weight error."""
    metrics = {"perplexity_before": before.perplexity, "bits_per_param": bits_per_param(p, report)}
    if report.layers:
        metrics["weight_sqnr_db"] = report.weight_sqnr_db
    if report.calibration_peak_bytes:  # a calibrated quantizer (GPTQ, AWQ): what calibrating cost and bought
        errors = [(layer.output_error, layer.rtn_output_error) for layer in report.layers]
        metrics |= {"quantize_seconds": report.quantize_seconds,
                    "quantize_peak_memory_bytes": report.calibration_peak_bytes,
                    "layer_output_error": sum(e for e, _ in errors) / len(errors),  # mean over the layers
                    "layer_output_error_rtn": sum(r for _, r in errors) / len(errors),
                    "layers_worse_than_rtn": sum(e > r for e, r in errors)}
    return metrics


def bits_per_param(p: Plan, report) -> float:
    return report.bits_per_param if report.layers else torch.finfo(getattr(torch, p.compute_dtype)).bits


def train_and_evaluate(p: Plan, model, tokenizer, report, blocks: torch.Tensor, before, merge: bool,
                       evaluator: Evaluator, extras: dict) -> tuple[dict[str, float], list[dict], dict, dict]:
    """Fine-tune the attached adapter with its memory measured, evaluate, save the adapter into p.output_dir,
    merge and evaluate again if asked -> (metrics, loss rows, per-segment losses of each stage, per-item task
    results of each stage). before: the PerplexityResult of the attached model before training; extras: what
    evaluator.extras gave before training (held-out loss, task scores)."""
    trainable, total = model.get_nb_trainable_parameters()
    memory = weight_bytes(model)
    release_freed_memory()  # so the peak below is the training's, not what loading left behind
    start = memory_in_use(p.device)
    train_start = time.perf_counter()
    with reuse_freed_memory(p.device), PeakMemory(p.device) as peak:
        rows = fine_tune(model, blocks, p, memory)
    train_seconds = time.perf_counter() - train_start
    peak_bytes = training_peak(peak, start, memory, p.device)
    after = evaluator.perplexity(model)
    print(f"  perplexity after  {after.perplexity:.3f}")
    p.output_dir.mkdir(parents=True, exist_ok=True)
    adapters.save(model, p.output_dir / "adapter", p.adapter)
    metrics = {
        **base_metrics(p, report, before), **extras["metrics"], "perplexity_after": after.perplexity,
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
        "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total,
        "train_tokens": p.train.tokens_per_step * p.train.steps, "train_seconds": train_seconds,
        "train_tokens_per_second": p.train.tokens_per_step * p.train.steps / train_seconds,
        # PEFT's method comparison reports the median step; the first steps warm caches up
        "train_tokens_per_second_median": float(np.median([row["tokens_per_second"] for row in rows])),
        "peak_memory_bytes": peak_bytes,
        # CUDA: what the caching allocator held at its peak (>= allocated); CPU: the same as the peak
        "peak_memory_reserved_bytes": peak.reserved_bytes if p.device.type == "cuda" else peak_bytes,
        **memory_rows(memory, peak_bytes), **step_memory(rows, start, memory, p.device),
        "adapter_file_bytes": adapter_file_bytes(p.output_dir / "adapter"),
    }
    stage = evaluator.extras(model, "after")
    metrics |= stage["metrics"]
    items = [extras["items"], stage["items"]]
    losses = {"before": before.losses(), "after": after.losses()}
    if merge:
        adapters.merge(model, p.adapter)
        metrics["merged_quantized_share"] = quantized_share(model)
        merged = evaluator.perplexity(model)
        metrics["perplexity_merged"] = merged.perplexity
        losses["merged"] = merged.losses()
        print(f"  perplexity merged {metrics['perplexity_merged']:.3f}")
        stage = evaluator.extras(model, "merged")
        metrics |= stage["metrics"]
        items.append(stage["items"])
    metrics |= forgetting_metrics(metrics) | {"eval_seconds": evaluator.seconds}
    return metrics, rows, losses, merge_items(*items)


def adapter_file_bytes(folder) -> int:
    """The saved adapter's weights file (PEFT's file_size: adapter_model.safetensors), or all of its files when
    an adapter saves its weights otherwise."""
    from pathlib import Path

    weights = Path(folder) / "adapter_model.safetensors"
    files = [weights] if weights.is_file() else [f for f in Path(folder).rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


def resolved(p: Plan) -> dict[str, Any]:
    """What the run decided that the config left open (device=auto, compute_dtype=auto, module=auto, ...)."""
    return {"device": str(p.device), "compute_dtype": p.compute_dtype, "module": p.module,
            "layer_kind": p.layer_kind, "quantizer": asdict(p.quantizer) | {"label": quantizer_label(p.quantizer)},
            "adapter": asdict(p.adapter)}


def write_outputs(p: Plan, cfg: TrainConfig, metrics: dict, rows: list[dict], extra: dict,
                  items: dict | None = None) -> None:
    out = p.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        writer.writerows([k, float(v)] for k, v in metrics.items())
    with open(out / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "tokens_per_second", "memory_bytes",
                                               "memory_reserved_bytes"])
        writer.writeheader()
        writer.writerows(rows)
    written = ["metrics.csv", "loss.csv", "adapter/", "run.json"]
    if items:  # per-item task results of every stage: what paired comparisons of accuracy read
        (out / "items.json").write_text(json.dumps(items) + "\n")
        written.append("items.json")
    write_run_json(out, cfg, "train", resolved=resolved(p) | extra)
    print(f"wrote {out}/" + ", ".join(written))
