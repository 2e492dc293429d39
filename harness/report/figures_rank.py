"""The sweep figure of perplexity against the adapter rank, a panel per stage.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from harness.registry import FIGURES
from harness.report.configurations import STAGES, ordered, show
from harness.report.style import MARKERS, save_figure
from harness.report.sweep_data import (
    LINESTYLES,
    Skip,
    SweepData,
    _ci,
    _config_columns,
    _has,
    _legend_outside,
    figure,
    label,
)


@figure("perplexity_vs_rank", 1, 'Perplexity vs adapter rank',
        'Validation perplexity against the adapter rank (log2 axis), one panel per stage (before fine-tuning, after, after merging into the quantized weights), a line per configuration; the dashed line is the full-precision model; bands are 95% t-intervals across seeds.')
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
    fig.suptitle(f"{FIGURES.get('perplexity_vs_rank').title} ({note})")
    fig.tight_layout()
    return save_figure(fig, out, "perplexity_vs_rank", formats)
