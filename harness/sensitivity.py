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

import copy
import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

GRANULARITIES = ("coarse", "layer")  # coarse: each block and each projection type; layer: also each layer alone
KINDS = ("block", "projection", "layer")
SPLITS = ("train", "validation", "test")
FORMATS = ("png", "pdf", "svg")
FULL_PRECISION = "full precision"


@dataclass
class SensitivityConfig:
    """`python -m harness sensitivity`: perplexity increase per quantized layer group, and a mixed-precision plan."""

    model: Any = None  # a model/*.yaml node (harness.models.ModelConfig)
    data: Any = None  # a data/*.yaml node (harness.data.DataConfig)
    quantizer: Any = None  # the 4-bit quantizer whose sensitivity is measured (a quantizer/*.yaml node)
    keep_8bit: Any = None  # the quantizer of the groups the mixed-precision plan keeps (a quantizer/*.yaml node)
    granularity: str = "coarse"  # coarse: blocks + projection types; layer: also every linear layer alone
    top_k: list[int] = field(default_factory=lambda: [1, 2, 4])  # groups kept at 8 bits, one plan per k
    mixed_by: list[str] = field(default_factory=lambda: ["block", "projection"])  # groupings the plans rank
    control: bool = True  # also keep the k *least* sensitive groups at 8 bits: what the ranking is worth
    module: str = "auto"  # auto | harness | bitsandbytes: which linear module holds quantized weights
    device: str = "auto"
    compute_dtype: str = "auto"  # for quantizers whose compute_dtype is auto: bf16 where native, else fp32
    split: str = "validation"  # where groups are ranked and the plans chosen
    heldout_split: str | None = "test"  # where the plans are measured again; None: not measured elsewhere
    context_length: int = 1024
    stride: int | None = None  # None: = context_length
    max_tokens: int = 2048  # 0: the whole split
    output_dir: str = "results/sensitivity"
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])

    def __post_init__(self) -> None:
        from harness.device import check_compute_dtype, check_device

        if self.granularity not in GRANULARITIES:
            raise ValueError(f"sensitivity.granularity={self.granularity!r} is not accepted; use coarse (each block "
                             "and each projection type) or layer (also every linear layer alone)")
        if not self.top_k or any(not isinstance(k, int) or k < 1 for k in self.top_k):
            raise ValueError(f"sensitivity.top_k={list(self.top_k)} must be a non-empty list of integers >= 1 "
                             "(how many of the most sensitive groups each plan keeps at 8 bits), e.g. [1,2,4]")
        if len(set(self.top_k)) != len(self.top_k):
            raise ValueError(f"sensitivity.top_k={list(self.top_k)} repeats a value; list each k once")
        allowed = kinds_of(self.granularity)
        bad = [kind for kind in self.mixed_by if kind not in allowed]
        if bad:
            hint = " (layer needs granularity=layer)" if "layer" in bad else ""
            raise ValueError(f"sensitivity.mixed_by={list(self.mixed_by)} has {bad}; with granularity="
                             f"{self.granularity} use some of {list(allowed)}{hint}")
        if self.module not in ("auto", "harness", "bitsandbytes"):
            raise ValueError(f"sensitivity.module={self.module!r} is not accepted; use auto, harness or "
                             "bitsandbytes")
        check_device(self.device)
        check_compute_dtype(self.compute_dtype)
        if self.split not in SPLITS:
            raise ValueError(f"sensitivity.split={self.split!r} is not accepted; use one of {list(SPLITS)}")
        if self.heldout_split is not None and self.heldout_split not in SPLITS:
            raise ValueError(f"sensitivity.heldout_split={self.heldout_split!r} is not accepted; use one of "
                             f"{list(SPLITS)}, or null to measure the plans on `split` only")
        if self.heldout_split == self.split:
            raise ValueError(f"sensitivity.heldout_split={self.heldout_split!r} is the split the plans are chosen "
                             "on; use another split, or null to skip the held-out measurement")
        if self.context_length < 2:
            raise ValueError(f"sensitivity.context_length={self.context_length} must be at least 2")
        if self.stride is not None and not 1 <= self.stride <= self.context_length:
            raise ValueError(f"sensitivity.stride={self.stride} must be between 1 and "
                             f"context_length={self.context_length}")
        if self.max_tokens < 0:
            raise ValueError(f"sensitivity.max_tokens={self.max_tokens} must be >= 0 (0 evaluates the whole "
                             "split; about 40 groups are evaluated, so keep it a few thousand on a CPU)")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ValueError(f"sensitivity.formats has {bad}; accepted: {', '.join(FORMATS)}")


def register_schema() -> None:
    """Store SensitivityConfig in Hydra's ConfigStore as sensitivity_schema (experiments/sensitivity.yaml)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="sensitivity_schema", node=SensitivityConfig)


def kinds_of(granularity: str) -> tuple[str, ...]:
    return ("block", "projection", "layer") if granularity == "layer" else ("block", "projection")


# ---------------------------------------------------------------- groups


@dataclass(frozen=True)
class Group:
    name: str  # "block 3", "q_proj", or a layer's full name
    kind: str  # block | projection | layer
    layers: tuple[str, ...]  # full names of the linear layers quantized together
    block: int | None = None  # the transformer block (block and layer groups)
    projection: str | None = None  # the projection type (projection and layer groups)


def block_index(name: str) -> int | None:
    """'model.layers.3.self_attn.q_proj' -> 3 (the first numbered part); None outside numbered blocks."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def projection_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'q_proj'."""
    return name.rsplit(".", 1)[-1]


def layer_groups(layers: list[str], granularity: str = "coarse") -> list[Group]:
    """The target layers grouped per block and per projection type (and one group per layer for
    granularity=layer). Each grouping covers every layer exactly once; groups keep the model's order."""
    blocks: dict[int | None, list[str]] = {}
    projections: dict[str, list[str]] = {}
    for name in layers:
        blocks.setdefault(block_index(name), []).append(name)
        projections.setdefault(projection_type(name), []).append(name)
    groups = [Group("outside blocks" if b is None else f"block {b}", "block", tuple(names), block=b)
              for b, names in blocks.items()]
    groups += [Group(p, "projection", tuple(names), projection=p) for p, names in projections.items()]
    if granularity == "layer":
        groups += [Group(n, "layer", (n,), block=block_index(n), projection=projection_type(n)) for n in layers]
    return groups


def exact(names) -> list[str]:
    """quantize_model target patterns that match exactly these full layer names and nothing else."""
    return ["re:^" + re.escape(name) + "$" for name in names]


# ---------------------------------------------------------------- quantizing parts of a model


def quantize_copy(model: nn.Module, config, layers, module: str = "auto"):
    """A deep copy of `model` with only `layers` quantized by `config` and every other parameter cast to the
    config's compute dtype (quantize_model's rule) -> (copy, QuantizationReport). The original is untouched."""
    from harness.quantize_model import quantize_model

    out = copy.deepcopy(model)
    report = quantize_model(out, config, targets=exact(layers), module=module)
    return out, report


def quantize_mixed(model: nn.Module, parts: list[tuple[Any, list[str]]], module: str = "auto"):
    """A deep copy of `model` whose layers are quantized part by part: parts = [(quantizer config, layer names),
    ...] -> (copy, [report per non-empty part]).

    Every part is quantized from the loaded weights on a copy of its own, and its layers moved into one model:
    quantizing the parts one after another on the same copy would quantize the later parts from weights the
    earlier call had already cast to the compute dtype. All parts must share a compute dtype.
    """
    parts = [(config, list(names)) for config, names in parts if names]
    if not parts:
        raise ValueError("quantize_mixed needs at least one non-empty part")
    dtypes = {config.compute_dtype for config, _ in parts}
    if len(dtypes) > 1:
        raise ValueError(f"the parts' quantizers have different compute dtypes {sorted(dtypes)}; "
                         "set one compute_dtype for all of them")
    out, first = quantize_copy(model, parts[0][0], parts[0][1], module)
    reports = [first]
    for config, names in parts[1:]:
        other, report = quantize_copy(model, config, names, module)
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, other.get_submodule(name))
        for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):  # what PEFT reads; set by bitsandbytes parts
            if getattr(other, flag, False):
                setattr(out, flag, True)
        reports.append(report)
        del other
    return out, reports


def combined_bits(reports) -> float:
    """Bits per weight of every layer the reports quantized, together (weighted by each layer's weights)."""
    layers = [layer for report in reports for layer in report.layers]
    params = sum(layer.params for layer in layers)
    return sum(layer.bits_per_param * layer.params for layer in layers) / params if params else math.nan


# ---------------------------------------------------------------- measuring


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
        from harness.evaluate import perplexity

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
    from harness.data import tokenize
    from harness.device import resolve_device
    from harness.evaluate import prefix_token_id

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


# ---------------------------------------------------------------- the run


def ranked(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The groups of one kind, most sensitive (largest increase) first; failed groups last."""
    rows = table[table.kind == kind]
    return rows.sort_values("increase", ascending=False, na_position="last", kind="stable")


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

    from harness.data import load_corpus
    from harness.models import check_context_length, load_model
    from harness.quantize_model import target_layers
    from harness.records import write_run_json

    t_start = time.perf_counter()
    _once("bitsandbytes.autograd._functions")  # int8 on a CPU says it casts inputs to fp16 on every forward
    low, high = resolved_quantizers(cfg)
    none = dataclasses.replace(_none_config(), compute_dtype=low.compute_dtype)
    model_cfg = OmegaConf.to_object(cfg.model)
    model, tokenizer = load_model(model_cfg)
    check_context_length(cfg.context_length, model_cfg, model, field="sensitivity.context_length")
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


# ---------------------------------------------------------------- outputs


def write_outputs(table: pd.DataFrame, mixed: pd.DataFrame, meta: dict, cfg) -> list[Path]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sensitivity.csv", out / "mixed_precision.csv", out / "sensitivity.md"]
    table.to_csv(paths[0], index=False)
    mixed.to_csv(paths[1], index=False)
    paths[2].write_text(markdown(table, mixed, meta))
    paths += heatmap(table, meta, out, list(cfg.formats))
    return paths


def header(meta: dict) -> str:
    return (f"model {meta['model']} · quantizer {meta['quantizer']} (one group at a time, the rest unquantized in "
            f"{meta['compute_dtype']}) · {meta['tokens']:,} tokens of {meta['corpus']}/{meta['split']} · "
            f"full-precision perplexity {meta['reference_perplexity']:.3f}")


KIND_TITLES = {"block": "Per transformer block (every linear layer of the block quantized)",
               "projection": "Per projection type (that projection quantized in every block)",
               "layer": "Per layer (that one layer quantized)"}


def markdown(table: pd.DataFrame, mixed: pd.DataFrame, meta: dict) -> str:
    """sensitivity.md: the ranked tables (one per grouping) and the mixed-precision table."""
    parts = [f"# Layer sensitivity: {meta['model']} under {meta['quantizer']}\n", header(meta) + "\n",
             ("increase: perplexity minus full precision's on the same tokens; Δ NLL ± se: the mean per-token "
              "increase in nats with its standard error over paired 128-token segments.\n")]
    for kind in KINDS:
        rows = ranked(table, kind)
        if rows.empty:
            continue
        shown = rows.head(30) if kind == "layer" else rows
        view = pd.DataFrame({
            "rank": shown["rank"], "group": shown["group"], "layers": shown["n_layers"],
            "weights (M)": shown["params"] / 1e6, "perplexity": shown["perplexity"], "increase": shown["increase"],
            "increase %": 100 * shown["relative_increase"],
            "increase per M weights": shown["increase"] / (shown["params"] / 1e6),  # what a kept weight buys
            "Δ NLL ± se (mnats)": [f"{1e3 * a:.2f} ± {1e3 * b:.2f}"
                                    for a, b in zip(shown["nll_increase"], shown["nll_increase_se"])]})
        more = f" — top {len(shown)} of {len(rows)}" if len(shown) < len(rows) else ""
        parts.append(f"## {KIND_TITLES[kind]}{more}\n\n" + view.to_markdown(index=False, floatfmt=".3f") + "\n")
    if not mixed.empty:
        splits = list(dict.fromkeys(mixed["split"]))
        first = mixed.drop_duplicates("configuration").set_index("configuration")
        view = first[["bits_per_param", "layers_8bit"]].assign(**{"params_8bit %": 100 * first["params_8bit_share"]})
        for metric in ("perplexity", "recovered"):
            for split in splits:
                view[f"{metric} ({split})"] = mixed[mixed.split == split].set_index("configuration")[metric]
        view["groups_8bit"] = first["groups_8bit"].str.replace(";", ", ")
        parts.append(f"## Mixed precision: {meta['keep_8bit']} for the kept groups, {meta['quantizer']} for the "
                     "rest\n\n" + view.reset_index().to_markdown(index=False, floatfmt=".3f") + "\n\n"
                     f"Groups are ranked and plans chosen on {splits[0]}"
                     + (f"; {splits[1]} is text the choice never saw" if len(splits) > 1 else "")
                     + ". recovered: the share of uniform 4-bit's perplexity increase the plan wins back. "
                     "bits_per_param: codes and constants of the quantized linear layers (full precision: the "
                     "compute dtype's width).\n")
    return "\n".join(parts)


def summary_lines(table: pd.DataFrame, mixed: pd.DataFrame, meta: dict) -> str:
    lines = [header(meta)]
    for kind in KINDS:
        rows = ranked(table[table.status == "ok"], kind).head(3)
        if not rows.empty:
            lines.append(f"most sensitive {kind}s: " + ", ".join(
                f"{g} ({inc:+.3f})" for g, inc in zip(rows.group, rows.increase)))
    return "\n".join(lines)


def heatmap(table: pd.DataFrame, meta: dict, out: Path, formats: list[str]) -> list[Path]:
    """heatmap.<fmt>: the perplexity increase per block and per projection type, one panel each; with
    granularity=layer, the block x projection matrix of single layers before them. Each panel has its own colour
    scale: a whole block moves perplexity several times more than one layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from harness.plots import _save  # the harness' figure style and saving

    ok = table[table.status == "ok"]
    blocks = ok[ok.kind == "block"].assign(label=lambda d: d["group"].str.replace("block ", "", regex=False))
    panels = []  # (title, y label, matrix); seaborn draws each with its own colour bar
    per_layer = ok[ok.kind == "layer"]
    projections = ok[ok.kind == "projection"]
    if not per_layer.empty:
        matrix = per_layer.pivot(index="block", columns="projection", values="increase")
        panels.append(("one layer quantized", "transformer block",
                       matrix.reindex(columns=list(projections.group) or None)))
    panels.append(("one whole block quantized", "transformer block",
                   blocks.set_index("label")[["increase"]].rename(columns={"increase": "whole block"})))
    panels.append(("one projection type quantized\nin every block", "projection type",
                   projections.set_index("group")[["increase"]].rename(columns={"increase": "every block"})))
    unit = "perplexity increase (ppl − full-precision ppl)"
    widths = [max(m.shape[1], 1) + 1.6 for _, _, m in panels]
    rows = max(m.shape[0] for _, _, m in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.05 * sum(widths) + 1, 0.3 * rows + 2.4),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (title, ylabel, matrix) in zip(axes[0], panels):
        # diverging around 0: red is worse than full precision, blue (rounding that happened to help) better
        sns.heatmap(matrix, annot=True, fmt=".2f", cmap="vlag", center=0, ax=ax, annot_kws={"size": 8},
                    cbar_kws={"label": unit})
        ax.set(title=title, ylabel=ylabel, xlabel="")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(f"Perplexity increase when only that part is quantized to {meta['quantizer']} — {meta['model']}, "
                 f"{meta['tokens']:,} {meta['split']} tokens (full precision {meta['reference_perplexity']:.2f})",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "heatmap", formats)
