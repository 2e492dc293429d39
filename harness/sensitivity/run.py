"""Layer sensitivity: which parts of a model can take 4 bits, and which few are worth keeping at 8.

`python -m harness sensitivity` quantizes one group of linear layers at a time (each transformer block, each
projection type such as q_proj or down_proj across every block; with granularity=layer also each layer alone),
keeps the rest in the compute dtype, and measures the perplexity increase over the unquantized model on the
same tokens. Groups are ranked by that increase. Then the mixed-precision suggestion: for each k in top_k the k
most sensitive groups (of each grouping in mixed_by) are kept at 8 bits and the rest quantized to 4 bits, and
their perplexity is set against the bits per parameter it costs, against uniform 4-bit, uniform 8-bit and full
precision, and against the k *least* sensitive groups kept at 8 bits (the control: the same number of groups
chosen without the ranking).

The groups are ranked, and the suggestion chosen, on `split`; the mixed-precision table is measured again on
`heldout_split`, text the choice never saw, so a ranking that only fits its own tokens shows there.

The reference ("full precision") is the model with every parameter cast to the compute dtype and nothing
quantized: exactly what every group's model holds outside that group, so an increase is the group's alone.
Every evaluation runs on a fresh deep copy of the loaded model, as `eval` does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from harness.sensitivity.config import FULL_PRECISION, KINDS
from harness.sensitivity.groups import combined_bits, layer_groups, quantize_copy, quantize_mixed, ranked
from harness.sensitivity.outputs import summary_lines, write_outputs
from harness.user_error import validating


@dataclass
class Scorer:
    """Perplexity of a model on fixed token ids; the reference result is kept for paired increases."""

    ids: torch.Tensor
    context_length: int
    stride: int | None
    prefix_token: int | None
    device: torch.device
    reference: Any = None  # PerplexityResult of the full-precision model

    def __call__(self, model: nn.Module):
        from harness.evaluation.perplexity import perplexity

        model.to(self.device)
        return perplexity(model, self.ids, self.context_length, self.stride, self.prefix_token)

    def increase(self, result) -> dict[str, float]:
        """The increase over the reference: in perplexity, and in mean NLL with its standard error over the
        paired 128-token segments (same text, so segment-to-segment variation of the text itself cancels)."""
        ref = self.reference
        d = np.asarray(result.segment_nll) - np.asarray(ref.segment_nll)  # summed nats per segment
        tokens = np.asarray(ref.segment_tokens, dtype=float)
        delta = d.sum() / tokens.sum()
        n = len(d)
        # linearised standard error of a ratio of sums; neighbouring segments share context, so it is a guide
        se = math.sqrt(n / (n - 1) * float(((d - tokens * delta) ** 2).sum())) / tokens.sum() if n > 1 else math.nan
        return {"increase": result.perplexity - ref.perplexity,
                "relative_increase": result.perplexity / ref.perplexity - 1,
                "nll_increase": float(delta), "nll_increase_se": se}


def _scorer(model, tokenizer, corpus, split: str, cfg) -> Scorer:
    from harness.data.tokens import tokenize
    from harness.device import resolve_device
    from harness.evaluation.perplexity import prefix_token_id

    ids = tokenize(getattr(corpus, split), tokenizer)
    if cfg.max_tokens:
        ids = ids[: cfg.max_tokens]
    return Scorer(ids, cfg.context_length, cfg.stride, prefix_token_id(tokenizer), resolve_device(cfg.device))


def resolved_quantizers(cfg) -> tuple[Any, Any]:
    """(4-bit config, 8-bit config), validated, compute_dtype=auto resolved as eval resolves it (the
    quantizer's own explicit choice wins over the run's); both must compute in the same dtype."""
    from harness.config import quantizer_config
    from harness.device import resolve_compute_dtype, resolve_device

    device = resolve_device(cfg.device)
    out = []
    for key in ("quantizer", "keep_8bit"):
        qcfg = quantizer_config(cfg[key])
        if qcfg.compute_dtype == "auto":
            qcfg = dataclasses.replace(qcfg, compute_dtype=resolve_compute_dtype(cfg.compute_dtype, device))
        out.append(qcfg)
    low, high = out
    if low.compute_dtype != high.compute_dtype:
        raise ValueError(f"quantizer.compute_dtype ({low.compute_dtype}) and keep_8bit.compute_dtype "
                         f"({high.compute_dtype}) differ; a mixed model computes in one dtype: set both to auto "
                         "or to the same dtype")
    return low, high


def plans(table: pd.DataFrame, cfg) -> list[dict]:
    """Mixed-precision plans: for each grouping in mixed_by and each k, the k most sensitive groups (and, with
    control, the k least sensitive) kept at 8 bits. A k above the number of groups is skipped."""
    out = []
    for kind in cfg.mixed_by:
        order = ranked(table[table.status == "ok"], kind)
        for k in sorted(cfg.top_k):
            if k > len(order):
                print(f"  top_k={k}: only {len(order)} {kind} groups, skipped")
                continue
            choices = [("most sensitive", order.head(k))]
            if cfg.control and k < len(order):  # at k = all groups both choices are uniform 8-bit
                choices.append(("least sensitive", order.tail(k).iloc[::-1]))
            for choice, rows in choices:
                out.append({"configuration": f"{choice} {k} {kind}{'s' if k > 1 else ''} at 8 bits",
                            "kind": kind, "k": k, "choice": choice, "groups_8bit": list(rows.group),
                            "layers_8bit": [n for layers in rows.layers for n in layers]})
    return out


def run(cfg) -> dict[str, pd.DataFrame]:
    """The whole command on a composed (and checked) config -> {"sensitivity": ..., "mixed_precision": ...}."""
    from omegaconf import OmegaConf

    from harness.data.corpus import load_corpus
    from harness.models.quantize import target_layers
    from harness.models.sources import load_model, resolve_context_length
    from harness.records import write_run_json

    t_start = time.perf_counter()
    _once("bitsandbytes.autograd._functions")  # int8 on a CPU says it casts inputs to fp16 on every forward
    low, high = resolved_quantizers(cfg)
    none = dataclasses.replace(_none_config(), compute_dtype=low.compute_dtype)
    model_cfg = OmegaConf.to_object(cfg.model)
    model, tokenizer = load_model(model_cfg)
    with validating():
        cfg.context_length = resolve_context_length(cfg.context_length, model_cfg, model,
                                                    "sensitivity.context_length", cfg.stride)
    corpus = load_corpus(OmegaConf.to_object(cfg.data))
    score = _scorer(model, tokenizer, corpus, cfg.split, cfg)
    heldout = _scorer(model, tokenizer, corpus, cfg.heldout_split, cfg) if cfg.heldout_split else None
    layers = target_layers(model)
    groups = layer_groups(layers, cfg.granularity)
    counts = {kind: sum(g.kind == kind for g in groups) for kind in KINDS}
    print(f"sensitivity of {cfg.model.name} to {low.name} ({low.compute_dtype} compute): {len(layers)} linear "
          f"layers in {', '.join(f'{n} {k} groups' for k, n in counts.items() if n)}; {score.ids.numel()} tokens "
          f"of {corpus.name}/{cfg.split}, context {cfg.context_length}")

    reference_model, _ = quantize_copy(model, none, [], cfg.module)
    score.reference = score(reference_model)
    if heldout:
        heldout.reference = heldout(reference_model)
    del reference_model
    ref = score.reference.perplexity
    print(f"  {FULL_PRECISION:<32} perplexity {ref:9.3f}")

    rows = []
    for i, group in enumerate(groups, 1):
        t0 = time.perf_counter()
        row = {"group": group.name, "kind": group.kind, "block": group.block, "projection": group.projection,
               "layers": list(group.layers), "n_layers": len(group.layers)}
        try:
            quantized, report = quantize_copy(model, low, group.layers, cfg.module)
            result = score(quantized)
            del quantized
            row.update(status="ok", error="", perplexity=result.perplexity, **score.increase(result),
                       params=report.quantized_params, bits_per_param=report.bits_per_param,
                       weight_sqnr_db=report.weight_sqnr_db)
        except Exception as exc:  # noqa: BLE001  one failed group must not lose the others
            import traceback

            traceback.print_exc()
            row.update(status="failed", error="".join(traceback.format_exception_only(exc)).strip(),
                       perplexity=math.nan, increase=math.nan)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  [{i:>3}/{len(groups)}] {group.kind:<10} {group.name:<32} perplexity {row['perplexity']:9.3f}  "
              f"{row['increase']:+8.3f}  ({row['seconds']:.1f} s){'  FAILED ' + row['error'] if row['error'] else ''}",
              flush=True)
    table = pd.DataFrame(rows).astype({"block": "Int64"})
    if not (table.status == "ok").any():
        raise RuntimeError(f"every group failed to quantize; first error: {table.error.iloc[0]}")
    table["rank"] = 0
    for kind in KINDS:
        order = ranked(table, kind).index
        table.loc[order, "rank"] = range(1, len(order) + 1)
    table["params_share"] = table["params"] / sum(_params(model, layers))

    mixed = mixed_precision(model, layers, table, cfg, low, high, score, heldout)
    meta = {"model": cfg.model.name, "quantizer": low.name, "keep_8bit": high.name, "corpus": corpus.name,
            "split": cfg.split, "tokens": int(score.ids.numel()), "reference_perplexity": ref,
            "compute_dtype": low.compute_dtype}
    table = table.assign(**{k: v for k, v in meta.items() if k != "reference_perplexity"},
                         reference_perplexity=ref)
    table["layers"] = table["layers"].map(";".join)
    paths = write_outputs(table, mixed, meta, cfg)
    seconds = time.perf_counter() - t_start
    resolved = {"compute_dtype": low.compute_dtype, "device": str(score.device), "groups": counts,
                "target_layers": len(layers), "tokens": meta["tokens"], "seconds": seconds}
    paths.append(write_run_json(cfg.output_dir, cfg, "sensitivity", resolved))
    print(summary_lines(table, mixed, meta))
    print(f"done in {seconds:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return {"sensitivity": table, "mixed_precision": mixed}


class _OncePerMessage(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        new = record.getMessage() not in self.seen
        self.seen.add(record.getMessage())
        return new


def _once(logger: str) -> None:
    """Let each distinct message of `logger` through once (a warning per layer per forward would bury progress)."""
    log = logging.getLogger(logger)
    if not any(isinstance(f, _OncePerMessage) for f in log.filters):
        log.addFilter(_OncePerMessage())


def _none_config():
    from harness.config import quantizer_config

    return quantizer_config({"name": "none"})


def _params(model: nn.Module, layers) -> list[int]:
    return [model.get_submodule(n).weight.numel() for n in layers]


def mixed_precision(model, layers, table, cfg, low, high, score, heldout) -> pd.DataFrame:
    """Full precision, uniform 4-bit, uniform 8-bit and every plan, on `split` and on `heldout_split`: one tidy
    row per configuration x split."""
    configurations = [(FULL_PRECISION, {}, []), (f"uniform {low.name}", {}, []), (f"uniform {high.name}", {}, layers)]
    configurations += [(p["configuration"], p, p["layers_8bit"]) for p in plans(table, cfg)]
    scorers = [s for s in (score, heldout) if s is not None]
    splits = [cfg.split] + ([cfg.heldout_split] if heldout else [])
    total = sum(_params(model, layers))
    rows = []
    print(f"mixed precision: the k most sensitive groups at {high.name}, the rest at {low.name}")
    for label, plan, keep in configurations:
        keep_set = set(keep)
        if label == FULL_PRECISION:
            quantized, reports, bits = None, [], float(torch.finfo(getattr(torch, low.compute_dtype)).bits)
        else:
            rest = [n for n in layers if n not in keep_set]
            quantized, reports = quantize_mixed(model, [(high, keep), (low, rest)], cfg.module)
            bits = combined_bits(reports)
        kept_params = sum(_params(model, keep))
        for scorer, split in zip(scorers, splits):
            if quantized is None:
                result = scorer.reference
            else:
                result = scorer(quantized)
            rows.append({"configuration": label, "kind": plan.get("kind", ""), "k": plan.get("k", 0),
                         "choice": plan.get("choice", ""), "groups_8bit": ";".join(plan.get("groups_8bit", [])),
                         "layers_8bit": len(keep), "params_8bit_share": kept_params / total,
                         "bits_per_param": bits, "split": split, "tokens": int(scorer.ids.numel()),
                         "perplexity": result.perplexity, **scorer.increase(result)})
        del quantized
        ppl = "  ".join(f"{r['split']} {r['perplexity']:8.3f} ({r['increase']:+.3f})" for r in rows[-len(scorers):])
        print(f"  {label:<44} {bits:6.3f} bits/param  {ppl}", flush=True)
    frame = pd.DataFrame(rows)
    uniform = frame[frame.configuration == f"uniform {low.name}"].set_index("split")["increase"]
    frame["recovered"] = 1 - frame["increase"] / frame["split"].map(uniform)  # share of the 4-bit loss won back
    return frame


def check(cfg: DictConfig) -> None:
    """Validate the whole config (model, data, both quantizers, the knobs) before anything is loaded."""
    from harness.config import quantizer_config, validated
    from harness.data.corpus import check_corpus, data_config
    from harness.models.skeleton import check_available
    from harness.models.sources import check_context_length, model_config
    from harness.sensitivity.config import SensitivityConfig

    with validating():
        validated(SensitivityConfig, cfg)
        check_available(model_config(cfg.model))  # cached or reachable; a local config readable
        check_context_length(cfg.context_length, model_config(cfg.model),  # where the limit is known unloaded
                             field="sensitivity.context_length")
        check_corpus(data_config(cfg.data))  # the text loads and splits, before any model
    for key in ("quantizer", "keep_8bit"):
        with validating(key):
            quantizer_config(cfg[key])
    with validating():
        resolved_quantizers(cfg)  # one compute dtype for both
