"""What sensitivity writes: sensitivity.csv, mixed_precision.csv, sensitivity.md and the heatmap.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.sensitivity.config import KINDS
from harness.sensitivity.groups import ranked


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
    import matplotlib.pyplot as plt
    import seaborn as sns

    from harness.report.style import apply_style, save_figure

    apply_style()
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
    return save_figure(fig, out, "heatmap", formats)
