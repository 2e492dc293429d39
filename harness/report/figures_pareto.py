"""Sweep figures of quality against cost with the Pareto frontier marked, one file per (quality, cost) pair.

The pairs depend on the records (each lm-eval task adds its own), so one registered entry, `pareto`, writes them
all, as pareto_<quality>_vs_<cost>.<format> (harness.report.pareto.figure_stem), and returns every path; files of
pairs that no longer apply are removed by remove_stale, which make_figures calls after drawing.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from harness.report.formats import FORMATS
from harness.report.pareto import COSTS, Quality, figure_stem, pairs, parse_stem, points
from harness.report.style import save_figure
from harness.report.sweep_data import Skip, SweepData, figure

LOG_SPAN = 30  # a cost spanning more than this factor is drawn on a log axis


def log_axis(values) -> bool:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return len(values) > 0 and values.min() > 0 and values.max() / values.min() > LOG_SPAN


@figure("pareto", 6, "Pareto frontiers: quality against cost",
        "Quality (perplexity, lm-eval accuracy; after fine-tuning and after merging) against each cost (peak memory, trainable parameters, training seconds), one file per pair, the Pareto frontier coloured and labelled, dominated configurations grey.")
def pareto(data: SweepData, out: Path, formats: list[str]) -> list[Path]:
    found = pairs(data)
    if not found:
        raise Skip("no quality metric (perplexity_after|merged, <task>/acc[_norm]_after|merged) beside a cost "
                   f"({', '.join(COSTS)}) for two or more configurations among the ok cells")
    paths = []
    for q, cost in found:
        paths += draw_pair(data, q, cost, out, formats)
    return paths


def draw_pair(data: SweepData, q: Quality, cost: str, out: Path, formats: list[str]) -> list[Path]:
    table = points(data, q, cost)
    _, cost_label, scale, _ = COSTS[cost]
    x, y = table["cost"] * scale, table["quality"]
    on = table["frontier"].to_numpy()
    color = sns.color_palette("tab10")[0]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ax.plot(x[~on], y[~on], "o", color="0.65", ms=6, label=f"dominated ({(~on).sum()})")
    # the best quality to be had at each cost: flat until the next frontier point is affordable
    ax.step(x[on], y[on], where="post", color=color, lw=1.4, alpha=0.8)
    ax.plot(x[on], y[on], "o", color=color, ms=7, label=f"Pareto frontier ({on.sum()})")
    if log_axis(x):
        ax.set_xscale("log")
    if not q.higher_is_better and log_axis(y):  # perplexity at 2 bits can be 1000x that at 4
        ax.set_yscale("log")
    ax.margins(x=0.12, y=0.1)
    front = table[on].assign(x=x[on], y=y[on])
    for (cx, cy), same in front.groupby(["x", "y"], sort=False):  # equal points: one label naming them all
        _label(ax, " / ".join(same["config"]), cx, cy, color)
    ax.set_xlabel(f"{cost_label} (lower is better)")
    ax.set_ylabel(f"{q.label} ({q.direction})")
    seeds = "mean over seeds" if table["seeds"].max() > 1 else "one seed each"
    ax.set_title(f"{q.label} vs {cost_label.split(' (')[0]} ({seeds})", fontsize=11)
    ax.legend(loc="best", frameon=False, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, figure_stem(q.metric, cost), formats)


def _label(ax, text: str, x: float, y: float, color) -> None:
    """A frontier point's label, slanted so that neighbours' labels run side by side rather than into each
    other, and turned towards the middle near the top and right edges so that it stays inside the axes."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before asking where the point is
    across, up = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))
    right, below = across > 0.7, up > 0.75
    ax.annotate(text, (x, y), xytext=(-4 if right else 4, -5 if below else 5), textcoords="offset points",
                fontsize=8, rotation=25 if right == below else -25, rotation_mode="anchor",
                ha="right" if right else "left", va="top" if below else "bottom", color=color)


def remove_stale(out: Path, keep: list[Path]) -> list[Path]:
    """Remove the Pareto figures in `out` that were not just written -> what was removed."""
    keep = {Path(p).name for p in keep}
    stale = [p for p in out.glob("pareto_*") if p.suffix[1:] in FORMATS and parse_stem(p.stem)
             and p.name not in keep]
    for path in stale:
        path.unlink()
    return stale
