"""Sweep figures of what fine-tuning won back: recovery, and weight error against perplexity.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from scipy import stats as scipy_stats

from harness.registry import FIGURES
from harness.report.configurations import ordered, show
from harness.report.style import MARKERS, save_figure
from harness.report.sweep_data import (
    Skip,
    SweepData,
    _ci,
    _config_columns,
    _has,
    figure,
    label,
)


def recovery_share(before: float, after: float, full_precision: float, rel_tol: float = 1e-4) -> float:
    """Share of the quantization loss that fine-tuning won back: (before - after) / (before - full_precision).

    1 means the fine-tuned quantized model is as good as the full-precision one, 0 that fine-tuning changed
    nothing; it exceeds 1 when fine-tuning beats full precision and is negative when it made things worse.
    NaN when quantization lost (next to) nothing, |before - full_precision| <= rel_tol * full_precision (an
    unquantized or lossless base: there is no loss to recover), or when an input is missing."""
    values = [before, after, full_precision]
    if any(v is None or not np.isfinite(v) for v in values):
        return math.nan
    loss = before - full_precision
    if abs(loss) <= rel_tol * abs(full_precision):
        return math.nan
    return (before - after) / loss


@figure("recovery", 4, 'Quantization-loss recovery',
        'Share of the quantization loss won back by fine-tuning, (ppl before - ppl after) / (ppl before - ppl full precision), against the trainable parameters (log axis); 100% recovers all of it; labels give the rank.')
def recovery(data: SweepData, out: Path, formats: list[str]) -> list[Path]:
    ok = data.ok
    needed = ["perplexity_before", "perplexity_after", "perplexity_full_precision", "trainable_params"]
    missing = [m for m in needed if not _has(ok, m)]
    if missing:
        why = " (sweep.reference=false)" if "perplexity_full_precision" in missing else ""
        raise Skip(f"no {', '.join(missing)} in the ok cells{why}")
    shares = [recovery_share(r.perplexity_before, r.perplexity_after, r.perplexity_full_precision)
              for r in ok.itertuples()]
    cells = ok.assign(share=shares).dropna(subset=["share", "trainable_params"])
    if cells.empty:
        raise Skip("no cell lost perplexity to quantization (perplexity_before ~ perplexity_full_precision), so "
                   "there is no loss to recover")
    if cells["trainable_params"].nunique() < 2:
        raise Skip(f"trainable_params takes one value ({show(cells['trainable_params'].iloc[0])}); sweep the rank "
                   "or the adapter to draw it (the table has each configuration's share)")
    series_columns = _config_columns(data, cells, leave_out=("rank",))
    cells = ordered(cells, series_columns + ["rank"] if "rank" in cells.columns else series_columns)
    cells = cells.assign(series=[label(row, series_columns) for _, row in cells.iterrows()])
    adapters = list(dict.fromkeys(cells["adapter"])) if "adapter" in cells.columns else [None]
    series = list(dict.fromkeys(cells["series"]))
    colors = sns.color_palette("tab10" if len(series) <= 10 else "husl", len(series))
    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    ax.axhline(1.0, color="0.3", ls="--", lw=1)
    ax.axhline(0.0, color="0.3", ls=":", lw=1)
    handles = []
    for i, name in enumerate(series):
        group = cells[cells.series == name]
        adapter = group["adapter"].iloc[0] if "adapter" in group.columns else None
        marker = MARKERS[adapters.index(adapter) % len(MARKERS)]
        keys = ["rank"] if "rank" in group.columns else ["trainable_params"]
        rows = []
        for key, g in group.groupby(keys, sort=True):
            mean, low, high, _ = _ci(g["share"])
            rows.append((float(g["trainable_params"].mean()), mean, low, high, g[keys[0]].iloc[0]))
        points = pd.DataFrame(rows, columns=["x", "mean", "low", "high", "rank"]).sort_values("x")
        error = np.vstack([points["mean"] - points["low"], points["high"] - points["mean"]])
        ax.errorbar(points["x"], points["mean"], yerr=np.nan_to_num(error), color=colors[i], marker=marker,
                    ms=7, lw=1.2 if len(points) > 1 else 0, capsize=3)
        handles.append(Line2D([], [], color=colors[i], marker=marker, ms=7, lw=1.2 if len(points) > 1 else 0,
                              label=name))
        for _, p in points.iterrows():
            text = f"r={show(p['rank'])}" if "rank" in group.columns else ""
            ax.annotate(text, (p["x"], p["mean"]), xytext=(5, 5), textcoords="offset points", fontsize=8,
                        color=colors[i])
    ax.set_xscale("log")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, -0.05), max(high, 1.1))
    for y, text in ((1.0, " all of the loss won back (full precision)"), (0.0, " nothing won back")):
        ax.text(0.0, y, text, transform=ax.get_yaxis_transform(), ha="left", va="bottom", fontsize=8,
                color="0.3")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("quantization loss recovered (%)")
    ax.set_title(f"{FIGURES.get('recovery').title}: (ppl before − ppl after) / (ppl before − ppl full precision)",
                 fontsize=10.5)
    ax.legend(handles=handles, title=" ".join(c.rsplit(".", 1)[-1] for c in series_columns), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, out, "recovery", formats)


def base_columns(cells: pd.DataFrame) -> list[str]:
    """The settings that make a quantized base: the model, the quantizer and any swept quantizer.* key."""
    return [c for c in cells.columns if c in ("model", "quantizer") or c.startswith("quantizer.")]


def weight_error_points(data: SweepData) -> pd.DataFrame:
    """One row per quantized base among the ok cells that have weight_sqnr_db, perplexity_before and
    perplexity_full_precision: its settings, `label`, `sqnr_db` and `increase_pct` (perplexity_before /
    perplexity_full_precision - 1, in %), each the mean over the cells sharing the base."""
    ok = data.ok
    needed = ["weight_sqnr_db", "perplexity_before", "perplexity_full_precision"]
    if any(not _has(ok, m) for m in needed):
        return pd.DataFrame(columns=["label", "quantizer", "sqnr_db", "increase_pct"])
    ok = ok.dropna(subset=needed)
    keys = base_columns(ok)
    ok = ok.assign(increase_pct=(ok["perplexity_before"] / ok["perplexity_full_precision"] - 1) * 100)
    points = (ok.groupby(keys, dropna=False, sort=False)
              .agg(sqnr_db=("weight_sqnr_db", "mean"), increase_pct=("increase_pct", "mean"))
              .reset_index())
    varying = [c for c in keys if c != "quantizer" and points[c].nunique(dropna=False) > 1]
    points = ordered(points, ["quantizer", *varying])
    points["label"] = [label(row, ["quantizer", *varying]) for _, row in points.iterrows()]
    return points.reset_index(drop=True)


def spearman(points: pd.DataFrame) -> tuple[float, float, int]:
    """Spearman rank correlation of the points' SQNR and perplexity increase -> (rho, p-value, points)."""
    result = scipy_stats.spearmanr(points["sqnr_db"], points["increase_pct"])
    return float(result.statistic), float(result.pvalue), len(points)


def spearman_text(rho: float, p: float, n: int) -> str:
    return f"Spearman rho = {rho:.3f} (p = {p:.3g}, n = {n} quantizer bases)"


@figure("weight_error_vs_perplexity", 5, 'Weight error vs perplexity increase',
        'Per quantized base, the pooled weight SQNR of its quantized layers against its perplexity increase over full precision before fine-tuning; the title gives their Spearman rank correlation.')
def weight_error_vs_perplexity(data: SweepData, out: Path, formats: list[str]) -> tuple[list[Path], tuple]:
    points = weight_error_points(data)
    if len(points) < 3:
        have = ", ".join(points["label"]) if len(points) else "none"
        raise Skip(f"needs >= 3 quantizer bases with weight_sqnr_db, perplexity_before and "
                   f"perplexity_full_precision, has {len(points)} ({have}); sweep the quantizer")
    rho, p, n = spearman(points)
    quantizers = list(dict.fromkeys(points["quantizer"]))
    palette = dict(zip(quantizers, sns.color_palette("tab10" if len(quantizers) <= 10 else "husl",
                                                     len(quantizers))))
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for i, q in enumerate(quantizers):
        group = points[points.quantizer == q]
        ax.plot(group["sqnr_db"], group["increase_pct"], MARKERS[i % len(MARKERS)], color=palette[q], ms=8,
                label=q, ls="-" if len(group) > 1 else "", lw=0.8, alpha=0.9)
    others = [c for c in base_columns(points) if c != "quantizer" and points[c].nunique(dropna=False) > 1]
    for _, row in points.iterrows():  # the colour names the quantizer; neighbours' labels go above and below
        above = quantizers.index(row["quantizer"]) % 2 == 0
        ax.annotate(label(row, others) if others else row["label"], (row["sqnr_db"], row["increase_pct"]),
                    xytext=(0, 8 if above else -9), textcoords="offset points", fontsize=8, ha="center",
                    va="bottom" if above else "top", color=palette[row["quantizer"]])
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel("weight SQNR of the quantized layers (dB, higher = less error)")
    ax.set_ylabel("perplexity increase over full precision (%)")
    rho_text = "undefined (a constant axis)" if not np.isfinite(rho) else f"{rho:.3f}"
    ax.set_title(f"{FIGURES.get('weight_error_vs_perplexity').title}\nSpearman ρ = {rho_text} "
                 f"(p = {p:.3g}, n = {n} bases)", fontsize=11)
    ax.legend(title="quantizer", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, out, "weight_error_vs_perplexity", formats), (rho, p, n)
