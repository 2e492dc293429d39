"""QLoRA's double quantization in bits per parameter, measured on real layer shapes: `python -m harness memory
+paper=qlora_double_quant`.

For every model (built on the meta device: shapes only, so a 65B model takes seconds) and for the quantizer
without and with double quantization, the quantized linear layers (harness.models.quantize.target_layers, the
layers `quantize_model` replaces) are sized by the quantizer config's own storage_bytes(shape):

  constants bits/param = (storage bytes - code bytes) * 8 / quantized parameters,  code bytes = 4 bits per weight

so the constants include everything storage_bytes counts beyond the 4-bit codes: the block absmax values (fp32,
or 8-bit codes + an fp32 absmax per second-level block + the mean), and the per-layer tables (the 16-entry code
table, the 256-entry dynamic map). Beside each figure: the paper's, and a claims section saying whether each
holds (a bits figure holds when ours rounds to it at the paper's precision; "about 3 GB" holds when the
measured saving lies in `saving_gb_range`). GB = 1e9 bytes.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PUBLISHED_KEYS = {  # published key -> the quantity it stands beside
    "constants_bits": "constants bits/param, without DQ",
    "constants_bits_dq": "constants bits/param, with DQ",
    "saving_bits": "saving bits/param",
    "saving_gb": "saving GB",
}
FIELDS = ("models", "without_dq", "with_dq", "published", "saving_gb_model", "saving_gb_range", "source")
DEFAULT_OUTPUT = "results/paper/qlora_double_quant"


@dataclass
class DoubleQuantTable:
    """The validated `double_quant_table` node: model name -> ModelConfig, the two quantizer configs."""

    models: dict[str, Any]
    without_dq: Any
    with_dq: Any
    published: dict[str, float] = field(default_factory=dict)
    saving_gb_model: str | None = None  # the model the published saving_gb is about
    saving_gb_range: tuple[float, float] = (2.5, 3.5)  # what "about <saving_gb> GB" is taken to mean
    source: str = ""


def table_config(node) -> DoubleQuantTable:
    """A `double_quant_table` node (dict or DictConfig) -> DoubleQuantTable; a ValueError names the field and the
    fix."""
    from omegaconf import DictConfig, OmegaConf

    from harness.config import quantizer_config
    from harness.models.sources import model_config

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise TypeError(f"double_quant_table must be a mapping with {list(FIELDS)}, not {node!r}")
    unknown = sorted(set(node) - set(FIELDS))
    if unknown:
        raise ValueError(f"double_quant_table has unknown {unknown}; accepted: {list(FIELDS)}")
    models = node.get("models") or {}
    if not isinstance(models, dict) or not models:
        raise ValueError("double_quant_table.models is empty; give label -> model node, e.g. "
                         "`- /model@double_quant_table.models.llama-65b: llama-65b` in the defaults list")
    models = {label: model_config(m) for label, m in models.items()}
    quantizers = {}
    for key, wanted in (("without_dq", False), ("with_dq", True)):
        if node.get(key) is None:
            raise ValueError(f"double_quant_table.{key} is missing; give a quantizer node, e.g. "
                             f"`- /quantizer@double_quant_table.{key}: {'nf4_dq' if wanted else 'nf4'}`")
        q = quantizer_config(node[key])
        if getattr(q, "double_quant", None) is not wanted:
            raise ValueError(f"double_quant_table.{key} must be a blockwise quantizer with double_quant="
                             f"{str(wanted).lower()} (nf4, fp4, int4, fp4_e3m0), not {q.name} with "
                             f"double_quant={getattr(q, 'double_quant', 'n/a')}")
        quantizers[key] = q
    if quantizers["without_dq"].block_size != quantizers["with_dq"].block_size:
        raise ValueError("double_quant_table.without_dq and with_dq must share block_size (DQ changes only how the "
                         f"constants are stored): {quantizers['without_dq'].block_size} vs "
                         f"{quantizers['with_dq'].block_size}")
    published = dict(node.get("published") or {})
    bad = sorted(set(published) - set(PUBLISHED_KEYS))
    if bad:
        raise ValueError(f"double_quant_table.published has unknown {bad}; accepted: {list(PUBLISHED_KEYS)}")
    if not all(isinstance(v, (int, float)) for v in published.values()):
        raise ValueError(f"double_quant_table.published values must be numbers: {published}")
    gb_model = node.get("saving_gb_model")
    if "saving_gb" in published and gb_model not in models:
        raise ValueError(f"double_quant_table.saving_gb_model={gb_model!r} must name one of the models "
                         f"{list(models)} (the model the published saving_gb is about)")
    lo_hi = tuple(node.get("saving_gb_range") or (2.5, 3.5))
    if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
        raise ValueError(f"double_quant_table.saving_gb_range={list(lo_hi)} must be [low, high] with low < high")
    return DoubleQuantTable(models, quantizers["without_dq"], quantizers["with_dq"], published, gb_model,
                            (float(lo_hi[0]), float(lo_hi[1])), str(node.get("source") or ""))


def layer_shapes(model_cfg) -> tuple[list[tuple[int, ...]], int]:
    """(shapes of the layers quantize_model quantizes, the model's total parameter count), on the meta device."""
    from harness.memory.predictor import parameter_counts
    from harness.models.quantize import target_layers
    from harness.models.skeleton import meta_model

    model = meta_model(model_cfg)
    shapes = [tuple(model.get_submodule(n).weight.shape) for n in target_layers(model)]
    return shapes, parameter_counts(model)[1]


def measure(shapes: list[tuple[int, ...]], quantizer) -> dict[str, float]:
    """Storage of `shapes` under `quantizer`: bytes, code bytes (4 bits per weight) and the constants' bits/param."""
    params = sum(math.prod(s) for s in shapes)
    storage = sum(quantizer.storage_bytes(s) for s in shapes)
    codes = sum(-(-math.prod(s) * 4 // 8) for s in shapes)
    return {"params": params, "bytes": storage, "code_bytes": codes, "constants_bits": (storage - codes) * 8 / params}


def compute(table: DoubleQuantTable) -> pd.DataFrame:
    """Tidy rows: model, quantity, ours, published (NaN where the paper gives none), unit."""
    rows = []
    for label, model_cfg in table.models.items():
        shapes, total = layer_shapes(model_cfg)
        plain, dq = measure(shapes, table.without_dq), measure(shapes, table.with_dq)
        pub = table.published
        about = pub.get("saving_gb") if label == table.saving_gb_model else None
        for quantity, ours, published, unit in [
            ("parameters", total, None, "count"),
            ("quantized parameters (linear layers)", plain["params"], None, "count"),
            ("quantized layers", len(shapes), None, "count"),
            (PUBLISHED_KEYS["constants_bits"], plain["constants_bits"], pub.get("constants_bits"), "bits/param"),
            (PUBLISHED_KEYS["constants_bits_dq"], dq["constants_bits"], pub.get("constants_bits_dq"), "bits/param"),
            (PUBLISHED_KEYS["saving_bits"], plain["constants_bits"] - dq["constants_bits"], pub.get("saving_bits"),
             "bits/param"),
            ("quantized weights GB, without DQ", plain["bytes"] / 1e9, None, "GB"),
            ("quantized weights GB, with DQ", dq["bytes"] / 1e9, None, "GB"),
            (PUBLISHED_KEYS["saving_gb"], (plain["bytes"] - dq["bytes"]) / 1e9, about, "GB"),
        ]:
            rows.append({"model": label, "quantity": quantity, "ours": float(ours),
                         "published": float("nan") if published is None else float(published), "unit": unit})
    return pd.DataFrame(rows)


def _decimals(value: float) -> int:
    """The paper's precision: decimals of the published figure as written (0.5: 1, 0.127: 3)."""
    return max(0, -decimal.Decimal(repr(float(value))).normalize().as_tuple().exponent)


def claims(frame: pd.DataFrame, table: DoubleQuantTable) -> list[dict[str, Any]]:
    """One entry per published figure: the claim, ours per model, whether it holds and by what test."""
    out = []
    for key, quantity in PUBLISHED_KEYS.items():
        if key not in table.published:
            continue
        published = table.published[key]
        rows = frame[(frame["quantity"] == quantity) & frame["published"].notna()]
        ours = {r.model: r.ours for r in rows.itertuples()}
        if key == "saving_gb":
            lo, hi = table.saving_gb_range
            holds = all(lo <= v <= hi for v in ours.values())
            test = f"about {published:g} GB: the measured saving lies in [{lo:g}, {hi:g}] GB"
            shown = ", ".join(f"{m} {v:.3f} GB" for m, v in ours.items())
        else:
            d = _decimals(published)
            holds = all(round(v, d) == round(published, d) for v in ours.values())
            test = f"ours rounds to {published:g} at the paper's precision ({d} decimal{'s' if d != 1 else ''})"
            shown = ", ".join(f"{m} {v:.6f}" for m, v in ours.items())
        said = f"about {published:g} on {table.saving_gb_model}" if key == "saving_gb" else f"= {published:g}"
        out.append({"claim": f"{quantity} {said}", "ours": shown, "test": test, "holds": bool(holds)})
    return out


def _format(row) -> str:
    if row.unit == "count":
        return f"{int(row.ours):,}"
    return f"{row.ours:.6f}" if row.unit == "bits/param" else f"{row.ours:.3f}"


def render(frame: pd.DataFrame, table: DoubleQuantTable) -> str:
    q0, q1 = table.without_dq, table.with_dq
    shown = frame.assign(ours=[_format(r) for r in frame.itertuples()],
                         published=["" if pd.isna(p) else f"~{p:g}" if q == PUBLISHED_KEYS["saving_gb"] else f"{p:g}"
                                    for p, q in zip(frame["published"], frame["quantity"])])
    title = (f"# Double quantization: bits per parameter of the quantization constants ({q0.name}, block "
             f"{q0.block_size}; DQ: 8-bit constants, second-level block {q1.dq_block_size}; GB = 1e9 bytes)")
    lines = [title, "",
             shown[["model", "quantity", "ours", "published"]].to_markdown(index=False, disable_numparse=True), "",
             "## Claims", ""]
    lines += [f"- {c['claim']}: {'holds' if c['holds'] else 'does NOT hold'} ({c['ours']}; test: {c['test']})"
              for c in claims(frame, table)]
    lines += ["", ("Constants = storage_bytes(shape) of the quantizer config minus 4 bits per weight, summed over "
                   "the quantized linear layers (every nn.Linear but embeddings and lm_head), so they include the "
                   f"per-layer tables ({q0.name}'s 16-entry fp32 code table; with DQ also the 256-entry fp32 dynamic "
                   "map and the fp32 mean).")]
    if table.source:
        lines += ["", f"Published: {table.source}"]
    return "\n".join(lines) + "\n"


def report(cfg) -> pd.DataFrame:
    """The `memory` command with double_quant_table set: write double_quant.md, double_quant.csv, run.json under
    cfg.output_dir, print the markdown, return the tidy frame (its attrs['claims'] the claims)."""
    from harness.records import write_run_json

    table = table_config(cfg.double_quant_table)
    frame = compute(table)
    frame.attrs["claims"] = claims(frame, table)
    out = Path(cfg.output_dir or DEFAULT_OUTPUT)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "double_quant.csv", index=False)
    text = render(frame, table)
    (out / "double_quant.md").write_text(text)
    write_run_json(out, cfg, "memory")
    print(text + f"\nwrote {out}/double_quant.csv, double_quant.md, run.json")
    return frame
