"""The sweep figure of task accuracy (train.tasks) against the adapter rank: a row per task, a panel per stage.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from harness.report.configurations import STAGES, ordered
from harness.report.style import MARKERS, save_figure
from harness.report.sweep_data import LINESTYLES, Skip, SweepData, _ci, _config_columns, _legend_outside, figure, label

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def item_stderr(accuracy: float, items: float) -> float:
    """The standard error of a mean of 0/1 answers as lm-eval's mean_stderr computes it (sample sd / sqrt(n))."""
    return float(np.sqrt(accuracy * (1 - accuracy) / (items - 1)))


def task_names(ok) -> list[str]:
    """Tasks with an accuracy after fine-tuning in the ok cells (metric columns <task>/acc_after)."""
    return sorted(c.rpartition("/")[0] for c in ok.columns if c.endswith("/acc_after") and ok[c].notna().any())


@figure("task_accuracy_vs_rank", 1.5,  # beside perplexity_vs_rank, before the costs
        'Task accuracy vs adapter rank',
        "Accuracy of each train.tasks task against the adapter rank (log2 axis), a row per task and a panel per "
        "stage (before fine-tuning, after, after merging), a line per configuration; the dashed line is the "
        "full-precision model. Bands: with several seeds the 95% t-interval across them; with one seed the "
        "item-level 95% interval (acc ± 1.96 standard errors of a mean of 0/1 answers over the task's items). tables/tasks.md has the paired comparisons.")
def task_accuracy_vs_rank(data: SweepData, out: Path, formats: list[str]) -> list[Path]:
    ok = data.ok
    tasks = task_names(ok)
    if not tasks:
        raise Skip("no task accuracies (<task>/acc_after) in the ok cells; sweep with train.tasks=[...]")
    if "rank" not in ok.columns or ok["rank"].nunique() < 2:
        raise Skip("rank takes one value; sweep adapter.rank over several values to draw it")
    series_columns = _config_columns(data, ok, leave_out=("rank",))
    ok = ordered(ok, series_columns + ["rank"])
    ok = ok.assign(series=[label(row, series_columns) for _, row in ok.iterrows()])
    series = list(dict.fromkeys(ok["series"]))
    colors = sns.color_palette("tab10" if len(series) <= 10 else "husl", len(series))
    stages = [s for s in STAGES if any(f"{t}/acc_{s}" in ok.columns for t in tasks)]
    fig, axes = plt.subplots(len(tasks), len(stages), figsize=(4.3 * len(stages), 3.6 * len(tasks)),
                             sharey="row", squeeze=False)
    for row, task in enumerate(tasks):
        for ax, stage in zip(axes[row], stages):
            metric, count = f"{task}/acc_{stage}", f"{task}/sample_len_{stage}"
            if metric not in ok.columns:
                ax.set_visible(False)
                continue
            for i, name in enumerate(series):
                points = []
                for rank, group in ok[ok.series == name].groupby("rank"):
                    mean, low, high, n = _ci(group[metric])
                    if n == 1 and count in group.columns and group[count].iloc[0] > 1:
                        half = Z95 * item_stderr(mean, group[count].iloc[0])
                        low, high = mean - half, mean + half
                    points.append((float(rank), mean, low, high))
                points = [p for p in points if np.isfinite(p[1])]
                if not points:
                    continue
                x, mean, low, high = (np.array(v, dtype=float) for v in zip(*points))
                ax.plot(x, mean, color=colors[i], marker=MARKERS[i % len(MARKERS)], markersize=5, lw=1.6,
                        ls=LINESTYLES[i % len(LINESTYLES)], label=name)
                if np.isfinite(low).any():
                    ax.fill_between(x, low, high, color=colors[i], alpha=0.15, lw=0)
            reference = f"{task}/acc_full_precision"
            if reference in ok.columns and ok[reference].notna().any():
                ax.axhline(ok[reference].mean(), color="0.25", ls="--", lw=1.1, label="full precision")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ok["rank"].dropna().unique()), [f"{r:g}" for r in sorted(ok["rank"].dropna().unique())])
            ax.minorticks_off()
            ax.set_title(f"{task}: {STAGES[stage]}", fontsize=10)
            ax.set_xlabel("adapter rank r (log2 scale)")
        axes[row, 0].set_ylabel(f"{task} accuracy")
    legend = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    _legend_outside(fig, list(legend.values()), list(legend),
                    title=" ".join(c.rsplit(".", 1)[-1] for c in series_columns))
    fig.suptitle("Task accuracy vs adapter rank")
    fig.tight_layout()
    return save_figure(fig, out, "task_accuracy_vs_rank", formats)
