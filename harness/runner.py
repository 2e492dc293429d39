"""One sweep cell: quantize -> evaluate -> fine-tune -> evaluate -> merge -> evaluate -> record.

A cell lives in <sweep dir>/cells/<hash>/, the hash taken over its resolved config (every field that changes the
result; not the output folder, the progress bar or the sweep's own knobs), so two cells never share a folder and
the same cell run again finds its folder. The cell's record.json is written last and atomically: a record that
exists is complete, and a cell killed in flight (even by SIGKILL) has none and simply runs again.

Work shared between cells is done once:
- the evaluation of a quantized base before fine-tuning, and of the full-precision model (the reference), is
  cached on disk in <sweep dir>/bases/<hash>.json, under a file lock, so two processes racing for it compute it
  once and the second reads what the first wrote;
- on the CPU the quantized base itself is kept in memory and every cell gets a deep copy, so a process running
  many cells of one base quantizes it once. Not on CUDA: the cached copy would count in the next cell's
  measured peak memory, and quantizing on a GPU takes seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adapters.base import IncompatibleError
from harness.config import validated
from harness.device import resolve_device
from harness.evaluate import SEGMENT_TOKENS, PerplexityResult
from harness.records import config_hash, run_metadata, write_record
from harness.train import (
    Plan,
    TrainConfig,
    attach_adapter,
    base_metrics,
    build_base,
    data_for,
    eval_context,
    evaluate,
    plan,
    quantizer_label,
    resolved,
    train_and_evaluate,
    train_config,
    write_outputs,
)
from harness.user_error import message

LOGGERS = ("none", "tensorboard")
# composed keys that do not change a cell's result, left out of its hash
NOT_IDENTITY = ("hydra", "sweep", "logger", "output_dir", "paper")


@dataclass
class SweepSettings:
    """`sweep.*` knobs."""

    name: str = "custom"  # the grid's name; the default output_dir is results/sweeps/<name>
    rerun_failed: bool = False  # run again the cells whose record says failed (finished cells are always kept)
    reference: bool = True  # also evaluate the full-precision model (once per model): perplexity_full_precision
    report: bool = True  # after collecting: tables/, figures/ and report.md (python -m harness table, plot)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"sweep.name={self.name!r} is not accepted; use letters, digits, '_', '.', '-'")


@dataclass
class SweepConfig(TrainConfig):
    """`python -m harness sweep`: a train config per cell, plus the sweep's own knobs."""

    sweep: SweepSettings = field(default_factory=SweepSettings)
    logger: str = "none"  # none | tensorboard (event files in each cell's tensorboard/ folder)
    # "lora:8": every cell's adapter gets the rank whose trainable parameters come closest to LoRA r=8's on the
    # same targets (counted on the meta device); null: ranks as configured
    match_budget: str | None = None
    # a paper reproduction (experiments/paper/*.yaml run through the sweep): what harness.paper_sweep prints
    # beside our table; it does not change any cell
    paper: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.paper is not None:
            from harness.paper_sweep import SweepPaper

            validated(SweepPaper, self.paper)
        if self.match_budget is not None:
            name, _, rank = self.match_budget.partition(":")
            from harness.registry import ADAPTERS

            if not rank.isdigit() or int(rank) < 1 or name not in ADAPTERS.names():
                raise ValueError(f"match_budget={self.match_budget!r} is not accepted; write ADAPTER:RANK with an "
                                 f"adapter of {ADAPTERS.names()}, e.g. lora:8 (the trainable parameters of LoRA r=8)")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger={self.logger!r} is not accepted; use one of {list(LOGGERS)}")
        if self.logger == "tensorboard":
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ValueError("logger=tensorboard needs the tensorboard package: pip install tensorboard")


def sweep_config(node: DictConfig) -> SweepConfig:
    """A composed sweep node -> SweepConfig, validated."""
    base = train_config(node)
    config = SweepConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(TrainConfig)},
                         sweep=validated(SweepSettings, node.sweep), logger=node.logger,
                         match_budget=OmegaConf.select(node, "match_budget"),
                         paper=OmegaConf.select(node, "paper"))
    return config


def trainable_count(config: SweepConfig, adapter) -> int:
    """Trainable parameters of `adapter` (a validated AdapterConfig) on the model, counted on the meta device.
    QA-LoRA is sized by the quantizer's group size (its A sees the group-pooled input)."""
    from harness.config import quantizer_config
    from harness.memory_model import attach_meta, meta_model, parameter_counts
    from harness.models import model_config

    model = meta_model(model_config(config.model))
    group = getattr(quantizer_config(config.quantizer), "group_size", None) if adapter.name == "qalora" else None
    return parameter_counts(attach_meta(model, adapter, group_size=group))[0]


def matched_adapter(config: SweepConfig) -> tuple[dict, dict]:
    """(adapter node with the rank that matches config.match_budget, what was matched). AdaLoRA starts at init_r
    and prunes to rank: init_r is matched, rank kept at 2/3 of it (the 12 -> 8 of its YAML)."""
    from harness.config import adapter_config

    node = OmegaConf.to_container(OmegaConf.create(config.adapter), resolve=True)
    name, _, rank = config.match_budget.partition(":")
    target = trainable_count(config, adapter_config({"name": name, "rank": int(rank),
                                                          "targets": node["targets"]}))

    def with_rank(r: int) -> dict:
        return node | ({"init_r": r, "rank": max(1, 2 * r // 3)} if node["name"] == "adalora" else {"rank": r})

    counts: dict[int, int] = {}

    def count(r: int) -> int:
        if r not in counts:
            counts[r] = trainable_count(config, adapter_config(with_rank(r)))
        return counts[r]

    # LoRA, LoHa, AdaLoRA, QA-LoRA grow linearly with the rank: solve for it. LoKr does not (its Kronecker
    # factor turns full-rank past half its size): the powers of two up to 256 cover it.
    candidates = {1 << k for k in range(9)}
    slope = count(2) - count(1)
    if slope > 0:
        r = max(1, round((target - count(1)) / slope) + 1)
        candidates |= {max(1, r - 1), r, r + 1}
    best = min(candidates, key=lambda r: (abs(count(r) - target), r))
    return with_rank(best), {"budget_of": config.match_budget, "budget_params": target, "rank": best,
                             "trainable_params": count(best)}


def with_budget(config: SweepConfig) -> tuple[SweepConfig, dict]:
    """The config with its adapter's rank matched to the budget (unchanged when match_budget is null)."""
    if config.match_budget is None:
        return config, {}
    node, budget = matched_adapter(config)
    return dataclasses.replace(config, adapter=node), budget


def identity(node: DictConfig) -> dict:
    """What a cell's hash covers: the composed config, resolved, less what does not change its result."""
    tree = OmegaConf.to_container(node, resolve=True)
    for key in NOT_IDENTITY:
        tree.pop(key, None)
    tree.get("train", {}).pop("progress", None)
    for part in ("model", "data"):
        tree.get(part, {}).pop("cache_dir", None)  # where files are cached, not what they hold
    tree["device"] = resolve_device(tree["device"]).type  # auto: what it means on this machine
    return tree


def cell_hash(node: DictConfig) -> str:
    return config_hash(identity(node))


def describe(config: SweepConfig) -> dict:
    """The fields every table wants as columns, whatever was swept."""
    from harness.config import adapter_config, quantizer_config
    from harness.models import model_config

    q, a = quantizer_config(config.quantizer), adapter_config(config.adapter)
    return {"model": model_config(config.model).name, "quantizer": quantizer_label(q), "adapter": a.name,
            "rank": a.rank, "targets": ",".join(a.targets), "seed": config.train.seed,
            "steps": config.train.steps, "lr": config.train.lr}


# ---------------------------------------------------------------- the cell


def run_cell(node: DictConfig, overrides: list[str] | None = None) -> dict:
    """Run (or find already done) the cell `node` describes -> its record."""
    started = time.perf_counter()
    config = sweep_config(node)
    key = cell_hash(node)
    cell_dir = Path(config.output_dir) / "cells" / key
    path = cell_dir / "record.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous["status"] != "failed" or not config.sweep.rerun_failed:
            return previous | {"reused": True}
    record = run_metadata(node, "sweep") | {
        "config_hash": key, "overrides": list(overrides or []), "cell": describe(config), "seed": config.train.seed}
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
            metrics, losses = execute(p, config)
            record.update(status="ok", error="", metrics=metrics, losses=losses)
        except Exception as exc:  # the sweep goes on; the record says what happened  # noqa: BLE001
            record.update(status="failed", error=f"{type(exc).__name__}: {message(exc)}",
                          traceback=traceback.format_exc(), metrics={})
    record["seconds"] = time.perf_counter() - started
    write_record(path, record)
    return record


def execute(p: Plan, config: SweepConfig) -> tuple[dict[str, float], dict]:
    """Quantize (or copy the cached base), evaluate, fine-tune, evaluate, merge, evaluate -> (the metrics, the
    per-segment losses of every evaluation: what paired comparisons between cells read)."""
    sweep_dir = Path(config.output_dir)
    model, tokenizer, report, weights = quantized_base(p)
    blocks, ids = data_for(p, tokenizer)
    metrics = {}
    losses = {"text": text_key(ids, eval_context(model, p)), "segment_tokens": SEGMENT_TOKENS}
    if config.sweep.reference:
        reference = cached(sweep_dir, reference_identity(p), lambda: reference_perplexity(p, ids))
        metrics["perplexity_full_precision"] = reference.perplexity
        losses["full_precision"] = reference.losses()
    if weights is None:  # the adapter starts at zero: the attached model is the base, its evaluation shared
        before = cached(sweep_dir, before_identity(p), lambda: evaluate(model, ids, tokenizer, p))
        model = attach_adapter(p, model) if p.train.steps else model
    else:  # an init that moves the weights (LoftQ): evaluated as attached
        model = attach_adapter(p, model, weights)
        before = evaluate(model, ids, tokenizer, p)
    print(f"  perplexity before {before.perplexity:.3f}")
    if p.train.steps == 0:  # an evaluation-only cell (perplexity by data type): nothing is trained or saved
        return metrics | base_metrics(p, report, before), losses | {"before": before.losses()}
    trained, rows, stages = train_and_evaluate(p, model, tokenizer, report, blocks, ids, before, config.merge)
    metrics |= trained | predicted_memory(p)
    write_outputs(p, config, metrics, rows, p.adapter.report(model))
    if config.logger == "tensorboard":
        write_tensorboard(p.output_dir / "tensorboard", rows, metrics)
    return metrics, losses | stages


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
    from harness.memory_model import Scenario, predict

    dtype = getattr(torch, p.compute_dtype)
    optimizer = p.train.optimizer if p.train.optimizer != "auto" else (
        "paged_adamw_32bit" if p.device.type == "cuda" else "adamw")
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


# ---------------------------------------------------------------- shared work


CACHE_FORMAT = 2  # 2: whole evaluations with their segment losses (1 held the perplexity alone)
_BASE: dict = {}  # {hash: (model, tokenizer, report)}: the last quantized base this process built (CPU only)


def base_identity(p: Plan) -> dict:
    model = {k: v for k, v in asdict(p.model).items() if k != "cache_dir"}
    return {"model": model, "quantizer": asdict(p.quantizer), "module": p.module, "device": p.device.type,
            "seed": p.train.seed}


def before_identity(p: Plan) -> dict:
    data = {k: v for k, v in asdict(p.data).items() if k != "cache_dir"}
    return base_identity(p) | {"data": data, "eval": [p.train.eval_tokens, p.train.eval_context,
                                                      p.train.eval_split], "kind": "before"}


def reference_identity(p: Plan) -> dict:
    return before_identity(p) | {"quantizer": None, "module": None, "kind": "reference"}


def quantized_base(p: Plan):
    """(quantized model, tokenizer, report, full-precision weights for an init that needs them or None)."""
    if getattr(p.adapter, "init", "default") == "loftq" or p.device.type != "cpu":
        return build_base(p)
    key = config_hash(base_identity(p))
    if key not in _BASE:
        _BASE.clear()  # one base at a time: a grid's cells of one base run together
        gc.collect()
        model, tokenizer, report, _ = build_base(p)
        _BASE[key] = (model, tokenizer, report)
    model, tokenizer, report = _BASE[key]
    return copy.deepcopy(model), tokenizer, report, None


def reference_perplexity(p: Plan, ids: torch.Tensor):
    from harness.models import load_model

    torch.manual_seed(p.train.seed)
    model, tokenizer = load_model(p.model)
    return evaluate(model.to(p.device), ids, tokenizer, p)


def cached(sweep_dir: Path, key_fields: dict, compute) -> PerplexityResult:
    """compute() (a PerplexityResult) once per key for the whole sweep folder: <sweep>/bases/<hash>.json, under a
    file lock, so processes racing for the same evaluation compute it once (the others wait, then read it)."""
    import fcntl

    key_fields = key_fields | {"format": CACHE_FORMAT}
    path = sweep_dir / "bases" / f"{config_hash(key_fields)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return PerplexityResult(**json.loads(path.read_text())["value"])
        value = compute()
        write_record(path, {"key": key_fields, "value": value.as_dict()})
        return value


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
