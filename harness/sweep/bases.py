"""Work shared between cells, done once:
- the evaluation of a quantized base before fine-tuning, and of the full-precision model (the reference), is
  cached on disk in <sweep dir>/bases/<hash>.json, under a file lock, so two processes racing for it compute it
  once and the second reads what the first wrote;
- on the CPU the quantized base itself is kept in memory and every cell gets a deep copy, so a process running
  many cells of one base quantizes it once. Not on CUDA: the cached copy would count in the next cell's
  measured peak memory, and quantizing on a GPU takes seconds.
"""

from __future__ import annotations

import copy
import gc
from dataclasses import asdict
from pathlib import Path

import torch

from harness.evaluation.perplexity import PerplexityResult
from harness.records import config_hash, json_kind, read_json, say_once, write_record
from harness.training.plan import Plan, build_base, evaluate

CACHE_FORMAT = 2  # 2: whole evaluations with their segment losses (1 held the perplexity alone)

_BASE: dict = {}  # {hash: (model, tokenizer, report)}: the last quantized base this process built (CPU only)


def base_identity(p: Plan) -> dict:
    model = {k: v for k, v in asdict(p.model).items() if k != "cache_dir"}
    identity = {"model": model, "quantizer": asdict(p.quantizer), "module": p.module, "device": p.device.type,
                "seed": p.train.seed}
    if getattr(p.quantizer, "calibrated", False):  # its calibration set (in the quantizer's fields) is drawn from it
        identity["calibration_data"] = {k: v for k, v in asdict(p.data).items() if k != "cache_dir"}
    return identity


def before_identity(p: Plan) -> dict:
    data = {k: v for k, v in asdict(p.data).items() if k != "cache_dir"}
    return base_identity(p) | {"data": data, "eval": [p.train.eval_tokens, p.train.eval_context,
                                                      p.train.eval_split], "kind": "before"}


def reference_identity(p: Plan) -> dict:
    identity = before_identity(p) | {"quantizer": None, "module": None, "kind": "reference"}
    identity.pop("calibration_data", None)  # the full-precision model is one whatever a quantizer calibrates on
    return identity


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
    from harness.models.sources import load_model

    torch.manual_seed(p.train.seed)
    model, tokenizer = load_model(p.model)
    return evaluate(model.to(p.device), ids, tokenizer, p)


def cached(sweep_dir: Path, key_fields: dict, compute, decode=None):
    """compute() (a PerplexityResult, or any JSON value with decode=dict) once per key for the whole sweep folder:
    <sweep>/bases/<hash>.json, under a file lock, so processes racing for the same evaluation compute it once (the
    others wait, then read it). A file that cannot be read is named once and computed again; the kernel releases
    the lock of a killed process, so a lock file left behind never blocks."""
    decode = decode or (lambda value: PerplexityResult(**value))
    import fcntl

    key_fields = key_fields | {"format": CACHE_FORMAT}
    path = sweep_dir / "bases" / f"{config_hash(key_fields)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            value, reason = read_cached(path, decode)
            if reason is None:
                return value
            say_once(path, f"bases/{path.name} is damaged ({reason}); computed again")
        value = compute()
        write_record(path, {"key": key_fields, "value": value.as_dict() if hasattr(value, "as_dict") else value})
        return value


def read_cached(path: Path, decode) -> tuple[object, str | None]:
    """(the decoded value of a bases/<hash>.json, None), or (None, why it cannot be read)."""
    stored, reason = read_json(path)
    if reason is not None:
        return None, reason
    if not isinstance(stored, dict):
        return None, f"a JSON {json_kind(stored)}, not an object"
    if "value" not in stored:
        return None, "missing field value"
    try:
        return decode(stored["value"]), None
    except (TypeError, ValueError) as exc:  # fields missing or not of the evaluation's kind
        return None, f"value not an evaluation ({type(exc).__name__}: {exc})"
