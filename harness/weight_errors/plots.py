"""The errors command's figures (seaborn): error histograms, code levels over the weights, SQNR per layer.

Each function draws one figure, saves it once per format and returns the paths.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from harness.report.style import save_figure


def error_histograms(
    errors: dict[str, np.ndarray], source: str, out: Path, formats: list[str], log_count: bool = True
) -> list[Path]:
    """errors: quantizer label -> (n,) errors of one source in units of its tensor's std. One panel each.

    Each panel has its own x range (int8's errors are ~100x narrower than int2's); the titles give the RMS
    error so that panels compare at a glance.
    """
    ncols = min(3, len(errors))
    nrows = -(-len(errors) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 2.6 * nrows + 0.5), squeeze=False)
    for ax, (label, e) in zip(axes.flat, errors.items()):
        sns.histplot(x=e, bins=80, element="step", fill=False, log_scale=(False, log_count), ax=ax)
        ax.set_title(f"{label}   (RMS {np.sqrt(np.mean(e.astype(np.float64) ** 2)):.3g})", fontsize=10)
        ax.set_xlabel("error (ŵ − w) / std(w)")
        ax.set_ylabel("count (log)" if log_count else "count")
    for ax in axes.flat[len(errors) :]:
        ax.set_visible(False)
    fig.suptitle(f"Quantization error per quantizer — source: {source}")
    fig.tight_layout()
    return save_figure(fig, out, f"error_hist_{source}", formats)


def levels_over_weights(
    values: dict[int, np.ndarray],
    codes: dict[str, tuple[list[str], list[float], int]],
    source: str,
    out: Path,
    formats: list[str],
) -> list[Path]:
    """values: block size -> (n,) samples of w / block absmax; codes: title -> (labels, levels, block size).

    One panel per distinct code: the histogram of block-normalised weights with the code's levels as lines.
    """
    fig, axes = plt.subplots(len(codes), 1, figsize=(9, 1.9 * len(codes) + 0.6), sharex=True, squeeze=False)
    for ax, (i, (labels, levels, block)) in zip(axes[:, 0], enumerate(codes.values())):
        sns.histplot(x=values[block], bins=200, stat="density", color="0.6", edgecolor=None, ax=ax)
        for level in levels:
            ax.axvline(level, color=f"C{i}", lw=1.1)
        ax.set_title(f"{' / '.join(labels)}: {len(levels)} levels (block {block})", fontsize=10, loc="left")
        ax.set_ylabel("density")
    axes[-1, 0].set_xlabel("weight / block absmax")
    fig.suptitle(f"Block-normalised weights and each code's levels — source: {source}")
    fig.tight_layout()
    return save_figure(fig, out, f"levels_{source}", formats)


def sqnr_per_layer(df: pd.DataFrame, source: str, out: Path, formats: list[str]) -> list[Path]:
    """df: the long table's sqnr_db rows of one model source, tensors in model order.

    One panel per kind of projection (q_proj, down_proj, ...), transformer block index on x: a 30-layer model
    has 210 linear layers, too many to read as one row of names, but few kinds and a depth trend worth seeing.
    """
    data = df.assign(kind=df["tensor"].map(_layer_kind), block=df["tensor"].map(_block_index))
    kinds = list(dict.fromkeys(data["kind"]))
    grid = sns.relplot(
        data, x="block", y="value", hue="quantizer", style="quantizer", col="kind", col_order=kinds,
        col_wrap=min(4, len(kinds)), kind="line", markers=True, dashes=False, height=2.6, aspect=1.3,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels("transformer block (lm_head: -1)", "SQNR (dB)")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"SQNR per linear layer, by projection — source: {source} (higher is better)", y=1.02)
    return save_figure(grid.figure, out, f"sqnr_per_layer_{source}", formats)


def _layer_kind(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'q_proj'."""
    return name.rsplit(".", 1)[-1]


def _block_index(name: str) -> int:
    """'model.layers.3.self_attn.q_proj' -> 3; -1 for layers outside the numbered blocks (lm_head)."""
    numbers = [int(p) for p in name.split(".") if p.isdigit()]
    return numbers[0] if numbers else -1


def sqnr_heatmap(pool: pd.DataFrame, out: Path, formats: list[str]) -> list[Path]:
    """pool: harness.weight_errors.tables.pooled() rows. Quantizers x sources, annotated with the pooled SQNR."""
    quantizers = list(dict.fromkeys(pool["quantizer"]))
    sources = list(dict.fromkeys(pool["source"]))
    table = pool.pivot(index="quantizer", columns="source", values="sqnr_db").reindex(
        index=quantizers, columns=sources
    )
    bits = pool.groupby("quantizer")["bits_per_param"].mean()
    table.index = [f"{q} ({bits[q]:.2f} bits)" for q in quantizers]
    fig, ax = plt.subplots(figsize=(1.3 * len(sources) + 3, 0.5 * len(quantizers) + 1.5))
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "SQNR (dB)"}, ax=ax)
    ax.set_xlabel("source")
    ax.set_ylabel("quantizer")
    ax.set_title("Pooled SQNR per source (dB, higher is better)")
    return save_figure(fig, out, "sqnr_overview", formats)
