"""Groups of linear layers (each block, each projection type, each layer) and models quantized group by group.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn


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


def quantize_copy(model: nn.Module, config, layers, module: str = "auto"):
    """A deep copy of `model` with only `layers` quantized by `config` and every other parameter cast to the
    config's compute dtype (quantize_model's rule) -> (copy, QuantizationReport). The original is untouched."""
    from harness.models.quantize import quantize_model

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


def ranked(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The groups of one kind, most sensitive (largest increase) first; failed groups last."""
    rows = table[table.kind == kind]
    return rows.sort_values("increase", ascending=False, na_position="last", kind="stable")
