"""One sweep cell: quantize -> evaluate -> fine-tune -> evaluate -> merge -> evaluate -> record.

A cell lives in <sweep dir>/cells/<hash>/, the hash taken over its resolved config (every field that changes the
result; not the output folder, the progress bar or the sweep's own knobs), so two cells never share a folder and
the same cell run again finds its folder. The cell's record.json is written last and atomically: a record that
exists is complete, and a cell killed in flight (even by SIGKILL) has none and simply runs again. A record that
cannot be read (truncated by hand, copied badly, another schema) is named and counts as none. While a process runs
a cell it holds the cell's claim (harness.sweep.claims), so a second sweep on the same folder takes other cells.

Work shared between cells (base evaluations, the quantized base) lives in harness.sweep.bases.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig

from adapters.base import IncompatibleError
from harness.evaluation.perplexity import SEGMENT_TOKENS
from harness.records import RECORD_SCHEMA, damaged_record, read_record, run_metadata, write_record
from harness.sweep import claims
from harness.sweep.bases import (
    before_identity,
    cached,
    quantized_base,
    reference_identity,
    reference_perplexity,
)
from harness.sweep.budget import with_budget
from harness.sweep.config import SweepConfig, cell_hash, describe, sweep_config
from harness.training.config import resolve_optimizer
from harness.training.plan import Plan, attach_adapter, data_for, eval_context, plan
from harness.training.run import base_metrics, resolved, train_and_evaluate, write_outputs
from harness.training.stages import Evaluator, forgetting_split, merge_items
from harness.user_error import message


def run_cell(node: DictConfig, overrides: list[str] | None = None) -> dict:
    """Run (or find already done, or left to the process that runs it) the cell `node` describes -> its record;
    for a cell another live process has claimed, {"status": "claimed", "owner": its claim} (nothing written)."""
    config = sweep_config(node)
    key = cell_hash(node)
    cell_dir = Path(config.output_dir) / "cells" / key
    previous = kept(cell_dir / "record.json", config.sweep.rerun_failed)
    if previous is not None:
        return previous | {"reused": True}
    with claims.claimed(cell_dir) as owner:
        if owner is not None:
            return {"status": "claimed", "owner": owner, "config_hash": key}
        # another process may have finished it between the look above and the claim
        previous = kept(cell_dir / "record.json", config.sweep.rerun_failed)
        if previous is not None:
            return previous | {"reused": True}
        return run_claimed(node, config, key, cell_dir, overrides)


def kept(path: Path, rerun_failed: bool) -> dict | None:
    """The cell's record when it stands (a failed one unless asked to run again); a damaged one is named and
    counts as not run."""
    try:
        record, reason = read_record(path)
    except FileNotFoundError:
        return None
    if reason is not None:
        damaged_record(path, reason)
        return None
    return None if record["status"] == "failed" and rerun_failed else record


def run_claimed(node: DictConfig, config: SweepConfig, key: str, cell_dir: Path,
                overrides: list[str] | None) -> dict:
    """Run the cell this process has claimed; its record replaces any earlier one atomically."""
    started = time.perf_counter()
    record = run_metadata(node, "sweep") | claims.this_process() | {
        "schema": RECORD_SCHEMA, "config_hash": key, "overrides": list(overrides or []), "cell": describe(config),
        "seed": config.train.seed}
    try:
        p = plan(dataclasses.replace(config, output_dir=str(cell_dir)))
        if config.match_budget:
            config, record["budget"] = with_budget(config)
            record["cell"] = describe(config)
            p = plan(dataclasses.replace(config, output_dir=str(cell_dir)))
    except IncompatibleError as exc:  # a pair that cannot run (QA-LoRA on nf4, ...): recorded, not an error
        record.update(status="skipped", error=message(exc), metrics={})
    else:
        record["resolved"] = resolved(p)
        try:
            metrics, losses, items = execute(p, config)
            record.update(status="ok", error="", metrics=metrics, losses=losses)
            if items:
                record["items"] = items
        except Exception as exc:  # the sweep goes on; the record says what happened  # noqa: BLE001
            record.update(status="failed", error=f"{type(exc).__name__}: {message(exc)}",
                          traceback=traceback.format_exc(), metrics={})
    record["seconds"] = time.perf_counter() - started
    write_record(cell_dir / "record.json", record)
    return record


def execute(p: Plan, config: SweepConfig) -> tuple[dict[str, float], dict, dict]:
    """Quantize (or copy the cached base), evaluate, fine-tune, evaluate, merge, evaluate -> (the metrics, the
    per-segment losses of every evaluation, the per-item task results of every stage: what paired comparisons
    between cells read)."""
    sweep_dir = Path(config.output_dir)
    model, tokenizer, report, weights = quantized_base(p)
    blocks, ids = data_for(p, tokenizer)
    evaluator = Evaluator(p, tokenizer, ids)
    metrics, items = {}, []
    losses = {"text": text_key(ids, eval_context(model, p)), "segment_tokens": SEGMENT_TOKENS}
    if config.sweep.reference:
        reference = cached(sweep_dir, reference_identity(p), lambda: reference_perplexity(p, ids))
        metrics["perplexity_full_precision"] = reference.perplexity
        losses["full_precision"] = reference.losses()
        if p.tasks is not None:  # the full-precision model's task scores, once per sweep like its perplexity
            scores = cached(sweep_dir, reference_identity(p) | extras_identity(p, forgetting=False),
                            lambda: reference_extras(p, evaluator), decode=dict)
            metrics |= scores["metrics"]
            items.append(scores["items"])
    if weights is None:  # the adapter starts at zero: the attached model is the base, its evaluations shared
        before = cached(sweep_dir, before_identity(p), lambda: evaluator.perplexity(model))
        extras = cached(sweep_dir, before_identity(p) | extras_identity(p),
                        lambda: evaluator.extras(model, "before"), decode=dict)
        model = attach_adapter(p, model) if p.train.steps else model
    else:  # an init that moves the weights (LoftQ): evaluated as attached
        model = attach_adapter(p, model, weights)
        before, extras = evaluator.perplexity(model), evaluator.extras(model, "before")
    print(f"  perplexity before {before.perplexity:.3f}")
    if p.train.steps == 0:  # an evaluation-only cell (perplexity by data type): nothing is trained or saved
        metrics |= base_metrics(p, report, before) | extras["metrics"] | {"eval_seconds": evaluator.seconds}
        return metrics, losses | {"before": before.losses()}, merge_items(*items, extras["items"])
    trained, rows, stages, stage_items = train_and_evaluate(p, model, tokenizer, report, blocks, before,
                                                            config.merge, evaluator, extras)
    metrics |= trained | predicted_memory(p)
    items = merge_items(*items, stage_items)
    write_outputs(p, config, metrics, rows, p.adapter.report(model), items)
    if config.logger == "tensorboard":
        write_tensorboard(p.output_dir / "tensorboard", rows, metrics)
    return metrics, losses | stages, items


def extras_identity(p: Plan, forgetting: bool = True) -> dict:
    """What the shared task scores (and held-out loss) of a base depend on besides the base and its text."""
    s = p.train
    identity = {"kind": "extras", "tasks": list(s.tasks), "task_limit": s.task_limit, "num_fewshot": s.num_fewshot,
                "task_datasets": dict(s.task_datasets), "task_batch_size": s.task_batch_size}
    if forgetting and s.steps and s.forgetting_tokens:
        identity["forgetting"] = [s.forgetting_tokens, forgetting_split(p), s.forgetting_path]
    return identity


def reference_extras(p: Plan, evaluator: Evaluator) -> dict:
    """train.tasks scored on the full-precision model (stage full_precision)."""
    from harness.models.sources import load_model

    torch.manual_seed(p.train.seed)
    model, _ = load_model(p.model)
    return evaluator.extras(model.to(p.device), "full_precision", forgetting=False)


def text_key(ids: torch.Tensor, context: int) -> str:
    """What makes two evaluations' segments pair up: the same token ids, windows and segment length."""
    import hashlib

    digest = hashlib.sha256(ids.to(torch.int64).numpy().tobytes())
    digest.update(f"context={context},segment={SEGMENT_TOKENS}".encode())
    return digest.hexdigest()


def predicted_memory(p: Plan) -> dict[str, float]:
    """The memory predictor's parts for this very run (meta device), as predicted_memory_<part>_bytes, beside
    the measured memory_<part>_bytes. Frozen weights in the compute dtype; the adapter trains in fp32 (PEFT
    keeps adapter weights fp32), so no master copy."""
    from harness.memory.predictor import Scenario, predict

    dtype = getattr(torch, p.compute_dtype)
    optimizer = resolve_optimizer(p.train.optimizer, p.device)
    scenario = Scenario("cell", None if p.quantizer.name == "none" else p.quantizer, p.adapter,
                        weight_bytes=torch.finfo(dtype).bits // 8, precision="fp32", optimizer=optimizer)
    try:
        parts = predict(p.model, scenario, p.train.batch_size, p.train.seq_len, p.train.gradient_checkpointing,
                        compute_dtype=dtype)
    except Exception as exc:  # noqa: BLE001  a prediction the predictor cannot make costs the rows, not the cell
        print(f"  no memory prediction for this cell: {type(exc).__name__}: {exc}")
        return {}
    rows = {f"predicted_memory_{k}_bytes": v for k, v in parts.items() if k not in ("total", "trainable_params",
                                                                                      "total_params")}
    return rows | {"predicted_peak_memory_bytes": parts["total"]}


def write_tensorboard(folder: Path, rows: list[dict], metrics: dict[str, float]) -> None:
    """Loss, learning rate and tokens/s per step, and the final metrics, as TensorBoard event files."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for row in rows:
        for name in ("loss", "lr", "tokens_per_second"):
            writer.add_scalar(f"train/{name}", row[name], row["step"])
    for name, value in metrics.items():
        writer.add_scalar(f"metrics/{name}", value, len(rows))
    writer.close()


def run_job(cfg) -> None:
    """One Hydra job = one cell (in this process, a joblib worker or a SLURM job): run it and print one line."""
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job
    overrides = list(HydraConfig.get().overrides.task)
    label = " ".join(o for o in overrides if not o.startswith(("hydra", "+grid")))
    print(f"[cell {job.num}] {label or '(defaults)'}", flush=True)
    record = run_cell(cfg, overrides)
    if record["status"] == "claimed":
        owner = record["owner"]
        print(f"[cell {job.num}] run by pid {owner['pid']} on {owner['host']}; left to it", flush=True)
        return
    m = record.get("metrics") or {}
    stages = [f"{m[k]:.3f}" for k in ("perplexity_before", "perplexity_after") if k in m]
    result = (f"perplexity {' -> '.join(stages)}"
              + (f", merged {m['perplexity_merged']:.3f}" if "perplexity_merged" in m else "")) if m else record["error"]
    again = " (done before; kept)" if record.get("reused") else ""
    print(f"[cell {job.num}] {record['status']}{again}: {result}  ({record['seconds']:.0f} s) "
          f"{record['config_hash']}", flush=True)
