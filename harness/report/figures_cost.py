"""Sweep figures of cost: memory by part (measured and predicted) and training throughput.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Patch

from harness.registry import FIGURES
from harness.report.configurations import show
from harness.report.style import save_figure
from harness.report.sweep_data import (
    MB,
    MEASURED_PARTS,
    PART_LABELS,
    PREDICTED_PARTS,
    Skip,
    SweepData,
    _ci,
    _configurations,
    _has,
    figure,
)


@figure("memory_breakdown", 2, 'Training memory by part',
        "Training memory per configuration, part by part in MB (10^6 bytes): measured (solid) beside the memory model's prediction (hatched; its activations stand where the measurement has the rest).")
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
    ax.set_title(f"{FIGURES.get('memory_breakdown').title}: {what}, mean over seeds")
    fig.tight_layout()
    return save_figure(fig, out, "memory_breakdown", formats)


@figure("train_throughput", 3, 'Training throughput',
        'Training tokens per second per configuration: the mean over seeds (bar), each seed (dot) and the 95% t-interval (whisker) where there are several seeds.')
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
    ax.set_title(f"{FIGURES.get('train_throughput').title} ({note})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out, "train_throughput", formats)
