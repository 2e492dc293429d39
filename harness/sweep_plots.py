"""`python -m harness plot <sweep dir>`'s figures (seaborn), each drawn only when the sweep's grid has the data.

A configuration is a cell's settings except its seed; its seeds are replicates, shown as the mean with a 95%
Student-t interval (harness.stats.t_interval) wherever a configuration has more than one. Only cells with
status ok are plotted. Every figure is saved as PNG and PDF under <sweep dir>/figures/:

- perplexity_vs_rank: perplexity against the adapter rank, a panel per stage (before fine-tuning, after, after
  merging), a line per configuration, the full-precision model as a dashed line. Needs a configuration swept
  over more than one rank.
- memory_breakdown: the training memory part by part, measured and predicted side by side, in MB.
- train_throughput: training tokens per second per configuration.
- recovery: the share of the quantization loss that fine-tuning won back, against the trainable parameters.
- weight_error_vs_perplexity: each quantized base's weight SQNR against its perplexity increase over full
  precision, with their Spearman rank correlation. Needs at least three quantizer bases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator, PercentFormatter
from scipy import stats as scipy_stats

from harness.plots import MARKERS, _save  # (importing it sets the seaborn theme)
from harness.stats import t_interval
from harness.sweep_table import ordered, show

# figure name -> (title, one-line caption): the report embeds each figure with these
FIGURES = {
    "perplexity_vs_rank": (
        "Perplexity vs adapter rank",
        ("Validation perplexity against the adapter rank (log2 axis), one panel per stage (before fine-tuning, "
         "after, after merging into the quantized weights), a line per configuration; the dashed line is the "
         "full-precision model; bands are 95% t-intervals across seeds.")),
    "memory_breakdown": (
        "Training memory by part",
        ("Training memory per configuration, part by part in MB (10^6 bytes): measured (solid) beside the "
         "memory model's prediction (hatched; its activations stand where the measurement has the rest).")),
    "train_throughput": (
        "Training throughput",
        ("Training tokens per second per configuration: the mean over seeds (bar), each seed (dot) and the 95% "
         "t-interval (whisker) where there are several seeds.")),
    "recovery": (
        "Quantization-loss recovery",
        ("Share of the quantization loss won back by fine-tuning, (ppl before - ppl after) / (ppl before - ppl "
         "full precision), against the trainable parameters (log axis); 100% recovers all of it; labels give "
         "the rank.")),
    "weight_error_vs_perplexity": (
        "Weight error vs perplexity increase",
        ("Per quantized base, the pooled weight SQNR of its quantized layers against its perplexity increase "
         "over full precision before fine-tuning; the title gives their Spearman rank correlation.")),
}
STAGES = {"before": "before fine-tuning", "after": "after fine-tuning", "merged": "after merging"}
# the measured parts add up to the peak; the predictor's activations stand where the measured rest does
MEASURED_PARTS = ("quantized_weights", "other_weights", "adapter_weights", "gradients", "optimizer", "rest")
PREDICTED_PARTS = ("quantized_weights", "other_weights", "adapter_weights", "gradients", "optimizer",
                   "activations")
PART_LABELS = {"quantized_weights": "quantized weights", "other_weights": "other weights",
               "adapter_weights": "adapter weights", "gradients": "gradients", "optimizer": "optimizer state",
               "rest": "rest (measured) / activations (predicted)"}
NOT_SETTINGS = ("cell", "status", "error", "metric", "value")
MB = 1e6
# line styles cycle with the colours, so that lines lying on each other (every configuration shares the base
# before fine-tuning) stay visible
LINESTYLES = ["-", "--", "-.", ":"]


class Skip(Exception):
    """A figure the sweep has no data for; the message says why."""


@dataclass
class SweepData:
    cells: pd.DataFrame  # one row per cell (index: its hash): status, error, settings, one column per metric
    settings: list[str]  # the describing fields and every swept key (seed included)

    @property
    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells.status == "ok"]

    def varying(self, cells: pd.DataFrame | None = None) -> list[str]:
        """The settings except the seed that take more than one value among `cells` (default: the ok ones)."""
        cells = self.ok if cells is None else cells
        return [c for c in self.settings if c != "seed" and cells[c].nunique(dropna=False) > 1]


@dataclass
class PlotResult:
    written: dict[str, list[Path]] = field(default_factory=dict)  # figure name -> its files
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why it was not drawn
    spearman: tuple[float, float, int] | None = None  # weight_error_vs_perplexity: (rho, p, points)


def sweep_data(frame: pd.DataFrame) -> SweepData:
    """The tidy table (harness.sweep.tidy) -> one row per cell with its settings and metrics side by side."""
    settings = [c for c in frame.columns if c not in NOT_SETTINGS]
    cells = frame.drop_duplicates("cell").set_index("cell")[["status", "error", *settings]]
    measured = frame[frame.metric.notna()]
    if len(measured):
        values = measured.pivot_table(index="cell", columns="metric", values="value", aggfunc="first")
        cells = cells.join(values)
    return SweepData(cells, settings)


def label(row: pd.Series, columns: list[str]) -> str:
    """A configuration's short name from some of its settings: 'lora nf4 r=8 block_size=64'."""
    parts = []
    for c in columns:
        value = show(row[c])
        if c in ("model", "quantizer", "adapter"):
            parts.append(value)
        elif c == "rank":
            parts.append(f"r={value}")
        elif c == "quantizer.block_size":
            parts.append(f"block {value}")
        else:
            parts.append(f"{c.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)


def _config_columns(data: SweepData, cells: pd.DataFrame, leave_out: tuple[str, ...] = ()) -> list[str]:
    """What names a configuration (or a line of them): the varying settings, or the usual three if none vary."""
    columns = [c for c in data.varying(cells) if c not in leave_out]
    if not columns:
        columns = [c for c in ("adapter", "quantizer") if c in cells.columns and c not in leave_out]
    return columns


def _configurations(data: SweepData, cells: pd.DataFrame) -> pd.DataFrame:
    """cells -> the same rows, sorted by configuration, with a `config` label column."""
    columns = _config_columns(data, cells) or ["adapter"]
    cells = ordered(cells, columns)
    return cells.assign(config=[label(row, columns) for _, row in cells.iterrows()])


def _has(cells: pd.DataFrame, metric: str) -> bool:
    return metric in cells.columns and cells[metric].notna().any()


def _ci(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with NaN for low/high when there is no interval."""
    mean, low, high, n = t_interval(np.asarray(values, dtype=float))
    return mean, (math.nan if low is None else low), (math.nan if high is None else high), n


def _legend_outside(fig, handles, labels, title: str | None = None) -> None:
    fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


# ---------------------------------------------------------------- 1. perplexity vs rank


def perplexity_vs_rank(data: SweepData, out: Path, formats: list[str]) -> list[Path]:
    ok = data.ok
    stages = [s for s in STAGES if _has(ok, f"perplexity_{s}")]
    if not stages:
        raise Skip("no perplexity metrics in the ok cells")
    if "rank" not in ok.columns or ok["rank"].nunique() < 2:
        ranks = "/".join(show(r) for r in ok["rank"].dropna().unique()) if "rank" in ok.columns else "none"
        raise Skip(f"rank takes one value (r={ranks}); sweep adapter.rank over several values to draw it")
    series_columns = _config_columns(data, ok, leave_out=("rank",))
    ok = ordered(ok, series_columns + ["rank"])
    ok = ok.assign(series=[label(row, series_columns) for _, row in ok.iterrows()])
    if ok.groupby("series", sort=False)["rank"].nunique().max() < 2:
        raise Skip("no configuration is swept over more than one rank (the ranks differ only between "
                   f"{', '.join(series_columns)})")
    series = list(dict.fromkeys(ok["series"]))
    colors = sns.color_palette("tab10" if len(series) <= 10 else "husl", len(series))
    ranks = sorted(float(r) for r in ok["rank"].dropna().unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.3 * len(stages), 4.0), sharey=True, squeeze=False)
    banded = False
    for ax, stage in zip(axes[0], stages):
        metric = f"perplexity_{stage}"
        for i, name in enumerate(series):
            rows = []
            for rank, group in ok[ok.series == name].groupby("rank"):
                mean, low, high, _ = _ci(group[metric])
                rows.append((float(rank), mean, low, high))
            points = pd.DataFrame(rows, columns=["rank", "mean", "low", "high"]).dropna(subset=["mean"])
            if points.empty:
                continue
            ax.plot(points["rank"], points["mean"], color=colors[i], marker=MARKERS[i % len(MARKERS)],
                    markersize=5, lw=1.6, ls=LINESTYLES[i % len(LINESTYLES)], label=name)
            if points["low"].notna().any():
                banded = True
                ax.fill_between(points["rank"], points["low"], points["high"], color=colors[i], alpha=0.18,
                                lw=0)
        if _has(ok, "perplexity_full_precision"):
            for model, group in ok.groupby("model") if "model" in ok.columns else [(None, ok)]:
                several = "model" in ok.columns and ok["model"].nunique() > 1
                ax.axhline(group["perplexity_full_precision"].mean(), color="0.25", ls="--", lw=1.1,
                           label=f"full precision ({model})" if several else "full precision")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ranks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(STAGES[stage], fontsize=11)
        ax.set_xlabel("adapter rank r (log2 scale)")
    axes[0, 0].set_ylabel("validation perplexity")
    legend = {}  # every panel's lines, once each (a stage may lack some configurations)
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    _legend_outside(fig, list(legend.values()), list(legend),
                    title=" ".join(c.rsplit(".", 1)[-1] for c in series_columns))
    note = "mean over seeds; bands: 95% t-interval" if banded else "one seed per point"
    fig.suptitle(f"{FIGURES['perplexity_vs_rank'][0]} ({note})")
    fig.tight_layout()
    return _save(fig, out, "perplexity_vs_rank", formats)


# ---------------------------------------------------------------- 2. memory breakdown


def memory_breakdown(data: SweepData, out: Path, formats: list[str]) -> list[Path]:
    measured = [f"memory_{p}_bytes" for p in MEASURED_PARTS]
    predicted = [f"predicted_memory_{p}_bytes" for p in PREDICTED_PARTS]
    ok = data.ok
    present = [m for m in measured if m in ok.columns]
    if not present:
        raise Skip("no measured memory parts (memory_<part>_bytes) in the ok cells; evaluation-only cells "
                   "(train.steps=0) train nothing")
    ok = ok[ok[present].notna().any(axis=1)]
    cells = _configurations(data, ok)
    configs = list(dict.fromkeys(cells["config"]))
    mean = cells.reindex(columns=["config", *measured, *predicted]).groupby("config", sort=False).mean()
    with_prediction = mean[predicted].notna().any(axis=1)
    height = 0.38 if with_prediction.any() else 0.7
    colors = dict(zip(MEASURED_PARTS, sns.color_palette("Set2", len(MEASURED_PARTS))))
    fig, ax = plt.subplots(figsize=(9.5, (0.62 if with_prediction.any() else 0.4) * len(configs) + 1.6))
    widest = 0.0
    for i, config in enumerate(configs):
        bars = [(measured, i - (height / 2 + 0.02 if with_prediction[config] else 0), None)]
        if with_prediction[config]:
            bars.append((predicted, i + height / 2 + 0.02, "///"))
        for columns, y, hatch in bars:
            left = 0.0
            for part, column in zip(MEASURED_PARTS, columns):
                value = mean.at[config, column] / MB
                if not np.isfinite(value) or value <= 0:
                    continue
                ax.barh(y, value, height=height, left=left, color=colors[part], hatch=hatch,
                        edgecolor="white" if hatch is None else "0.35", lw=0.6)
                left += value
            ax.text(left, y, f" {left:,.0f}", va="center", fontsize=8, color="0.2")
            widest = max(widest, left)
    ax.set_yticks(range(len(configs)), configs)
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    ax.set_xlim(0, widest * 1.12)
    ax.set_xlabel("memory (MB, 10⁶ bytes)")
    ax.set_ylabel("configuration")
    handles = [Patch(facecolor=colors[p], label=PART_LABELS[p]) for p in MEASURED_PARTS]
    if with_prediction.any():
        handles += [Patch(facecolor="white", edgecolor="0.35", label="measured (upper bar)"),
                    Patch(facecolor="white", edgecolor="0.35", hatch="///", label="predicted (lower bar)")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    what = "measured vs predicted" if with_prediction.any() else "measured (no prediction in these records)"
    ax.set_title(f"{FIGURES['memory_breakdown'][0]}: {what}, mean over seeds")
    fig.tight_layout()
    return _save(fig, out, "memory_breakdown", formats)


# ---------------------------------------------------------------- 3. throughput


def train_throughput(data: SweepData, out: Path, formats: list[str]) -> list[Path]:
    ok = data.ok
    if not _has(ok, "train_tokens_per_second"):
        raise Skip("no train_tokens_per_second in the ok cells (nothing was trained)")
    cells = _configurations(data, ok[ok["train_tokens_per_second"].notna()])
    configs = list(dict.fromkeys(cells["config"]))
    hue = next((c for c in ("adapter", "quantizer", "model") if c in data.varying(cells)), None)
    groups = list(dict.fromkeys(cells[hue])) if hue else [None]
    palette = dict(zip(groups, sns.color_palette("tab10" if len(groups) <= 10 else "husl", len(groups))))
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(configs) + 1.6))
    banded = False
    for i, config in enumerate(configs):
        group = cells[cells.config == config]
        mean, low, high, _ = _ci(group["train_tokens_per_second"])
        color = palette[group[hue].iloc[0] if hue else None]
        error = None
        if np.isfinite(low):
            banded = True
            error = [[mean - low], [high - mean]]
        ax.barh(i, mean, height=0.7, color=color, alpha=0.85, xerr=error, capsize=3,
                error_kw={"lw": 1.1, "ecolor": "0.15"})
        ax.plot(group["train_tokens_per_second"], np.full(len(group), i), "o", color="0.1", ms=3.5, alpha=0.7)
        right = high if np.isfinite(high) else group["train_tokens_per_second"].max()
        ax.text(right, i, f"  {mean:,.0f}", va="center", fontsize=8, color="0.2")
    ax.set_yticks(range(len(configs)), configs)
    ax.invert_yaxis()
    ax.set_xlim(0, ax.get_xlim()[1] * 1.1)
    ax.set_xlabel("training throughput (tokens / s)")
    ax.set_ylabel("configuration")
    if hue and len(groups) > 1:
        ax.legend(handles=[Patch(facecolor=palette[g], label=show(g)) for g in groups], title=hue,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    note = "bar: mean over seeds, dots: seeds, whiskers: 95% t-interval" if banded else "one seed each"
    ax.set_title(f"{FIGURES['train_throughput'][0]} ({note})", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "train_throughput", formats)


# ---------------------------------------------------------------- 4. recovery


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
    ax.set_title(f"{FIGURES['recovery'][0]}: (ppl before − ppl after) / (ppl before − ppl full precision)",
                 fontsize=10.5)
    ax.legend(handles=handles, title=" ".join(c.rsplit(".", 1)[-1] for c in series_columns), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, out, "recovery", formats)


# ---------------------------------------------------------------- 5. weight error vs perplexity


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
    ax.set_title(f"{FIGURES['weight_error_vs_perplexity'][0]}\nSpearman ρ = {rho_text} "
                 f"(p = {p:.3g}, n = {n} bases)", fontsize=11)
    ax.legend(title="quantizer", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, out, "weight_error_vs_perplexity", formats), (rho, p, n)


# ---------------------------------------------------------------- all of them


DRAW: dict[str, Callable] = {
    "perplexity_vs_rank": perplexity_vs_rank,
    "memory_breakdown": memory_breakdown,
    "train_throughput": train_throughput,
    "recovery": recovery,
    "weight_error_vs_perplexity": weight_error_vs_perplexity,
}


def make_figures(sweep_dir: Path | str, formats: tuple[str, ...] = ("png", "pdf"),
                 echo: Callable[[str], None] = print) -> PlotResult:
    """Collect the sweep afresh (rewriting results.parquet/csv) and draw every figure its data allows into
    <sweep dir>/figures/, saying on `echo` what was written and what was skipped and why. A stale file of a
    figure that is now skipped is removed, so figures/ always matches the records."""
    from harness.sweep import collect

    sweep_dir = Path(sweep_dir)
    data = sweep_data(collect(sweep_dir))
    out = sweep_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    for name, draw in DRAW.items():
        try:
            if data.ok.empty:
                raise Skip("no cell finished ok")
            drawn = draw(data, out, list(formats))
        except Skip as why:
            result.skipped[name] = str(why)
        else:
            if name == "weight_error_vs_perplexity":
                drawn, result.spearman = drawn
            result.written[name] = drawn
        if name in result.skipped:
            for fmt in formats:
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
            echo(f"skipped {name}: {result.skipped[name]}")
        else:
            echo(f"wrote {name}: {', '.join(str(p) for p in result.written[name])}")
    if result.spearman is not None:
        echo(f"weight_error_vs_perplexity: {spearman_text(*result.spearman)}")
    return result
