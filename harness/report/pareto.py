"""Pareto frontiers of a sweep: for each (quality, cost) pair its records have, the configurations that no other
beats on both (the main view of PEFT's method-comparison app). Written as tables/pareto.md|csv here and drawn
by figures_pareto.py.

Quality: perplexity (lower is better) and lm-eval accuracies `<task>/acc|acc_norm` (higher is better), after
fine-tuning and after merging; the evaluations before fine-tuning and in full precision are not a fine-tuning
result, so they are left out. Costs, lower is better: peak memory, trainable parameters, training seconds. A
point is a configuration (every setting but the seed) at the mean over its ok seeds that have both metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report.configurations import STAGES, paragraph
from harness.report.sweep_data import SweepData, _configurations, sweep_data

# cost metric -> (its short name in file names, axis label, scale to the shown unit, decimals shown)
COSTS = {"peak_memory_bytes": ("peak_memory", "peak memory (MB, 10⁶ bytes)", 1e-6, 1),
         "trainable_params": ("trainable_params", "trainable parameters", 1.0, 0),
         "train_seconds": ("train_seconds", "training time (s)", 1.0, 1)}

_PERPLEXITY = re.compile(r"perplexity_(?P<stage>after|merged)")
_ACCURACY = re.compile(r"(?P<task>.+)/(?P<kind>acc|acc_norm)_(?P<stage>after|merged)")


@dataclass(frozen=True)
class Quality:
    metric: str  # as in the records: perplexity_after, austen_cloze/acc_norm_merged
    higher_is_better: bool
    label: str  # for people: "austen_cloze acc_norm after merging"

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


def quality(metric: str) -> Quality | None:
    """A metric's quality reading, or None when it is no fine-tuned quality (a cost, a stage before, a task's
    perplexity or sample length)."""
    if match := _PERPLEXITY.fullmatch(metric):
        return Quality(metric, False, f"perplexity {STAGES[match['stage']]}")
    if match := _ACCURACY.fullmatch(metric):
        return Quality(metric, True, f"{match['task']} {match['kind']} {STAGES[match['stage']]}")
    return None


def _quality_order(q: Quality) -> tuple:
    # perplexity first, then each task's accuracies; after fine-tuning before after merging
    match = _PERPLEXITY.fullmatch(q.metric) or _ACCURACY.fullmatch(q.metric)
    groups = match.groupdict()
    return (q.higher_is_better, groups.get("task", ""), groups.get("kind", ""), list(STAGES).index(groups["stage"]))


def frontier(cost, value, higher_is_better: bool = False) -> np.ndarray:
    """Which points are on the Pareto frontier of (cost, value), cost lower-is-better -> a boolean per point.

    A point is dominated when another is no worse on both and strictly better on one; equal points do not
    dominate each other, so both stay on the frontier. A point with a NaN coordinate is never on it and
    dominates nothing."""
    cost = np.asarray(cost, dtype=float)
    loss = np.asarray(value, dtype=float) * (-1.0 if higher_is_better else 1.0)  # both to be minimised
    finite = np.isfinite(cost) & np.isfinite(loss)
    # [i, j]: point j dominates point i (NaN compares false, so a NaN point dominates nothing)
    no_worse = (cost[None, :] <= cost[:, None]) & (loss[None, :] <= loss[:, None])
    better = (cost[None, :] < cost[:, None]) | (loss[None, :] < loss[:, None])
    return finite & ~(no_worse & better).any(axis=1)


def figure_stem(quality_metric: str, cost: str) -> str:
    """The file name (without suffix) of a pair's figure: pareto_austen_cloze__acc_after_vs_peak_memory."""
    return f"pareto_{quality_metric.replace('/', '__')}_vs_{COSTS[cost][0]}"


def parse_stem(stem: str) -> tuple[Quality, str] | None:
    """figure_stem's inverse: (quality, cost metric), or None for a file that is not a Pareto figure."""
    for cost, (short, *_) in COSTS.items():
        suffix = f"_vs_{short}"
        if stem.startswith("pareto_") and stem.endswith(suffix):
            found = quality(stem[len("pareto_"):-len(suffix)].replace("__", "/"))
            return (found, cost) if found else None
    return None


def describe(stem: str) -> tuple[str, str] | None:
    """(title, caption) of a Pareto figure for report.md, from its file name; None for any other file."""
    parsed = parse_stem(stem)
    if parsed is None:
        return None
    q, cost = parsed
    cost_label = COSTS[cost][1]
    title = f"Pareto: {q.label} vs {cost_label.split(' (')[0]}"
    caption = paragraph(f"""`{q.metric}` ({q.direction}) against `{cost}` (lower is better; shown as {cost_label}).
        A point is a configuration (every setting but the seed) at the mean over its ok seeds. Coloured and
        labelled: the Pareto frontier, the configurations no other is at least as good as on both axes and
        better on one (the step line: the best {q.label} to be had at each cost); grey: dominated ones. The
        frontier's configurations are listed in `tables/pareto.md` (`python -m harness table`).""")
    return title, caption


def stem_order(stem: str) -> tuple:
    """Where a figure stands among the Pareto figures in report.md (() for any other file)."""
    parsed = parse_stem(stem)
    if parsed is None:
        return ()
    q, cost = parsed
    return (*_quality_order(q), list(COSTS).index(cost))


def pairs(data: SweepData) -> list[tuple[Quality, str]]:
    """The (quality, cost) pairs with at least two configurations among the ok cells that have both: with one
    there is nothing to trade off."""
    ok = _configurations(data, data.ok) if len(data.ok) else data.ok.assign(config=[])
    qualities = sorted((q for m in ok.columns if isinstance(m, str) and (q := quality(m))), key=_quality_order)
    found = []
    for q in qualities:
        for cost in COSTS:
            if cost in ok.columns:
                both = ok[ok[q.metric].notna() & ok[cost].notna()]
                if both["config"].nunique() >= 2:
                    found.append((q, cost))
    return found


def points(data: SweepData, q: Quality, cost: str) -> pd.DataFrame:
    """One row per configuration with both metrics: `config` (its short label), its settings, `cost` and
    `quality` (means over its seeds), `seeds` (how many), `frontier`; in cost order, then quality order."""
    ok = _configurations(data, data.ok)
    ok = ok[ok[q.metric].notna() & ok[cost].notna()]
    settings = [c for c in data.settings if c != "seed"]
    grouped = ok.groupby("config", sort=False)
    table = grouped[settings].first().assign(
        cost=grouped[cost].mean(), quality=grouped[q.metric].mean(), seeds=grouped.size()).reset_index()
    table["frontier"] = frontier(table["cost"], table["quality"], q.higher_is_better)
    return table.sort_values(["cost", "quality"], ascending=[True, not q.higher_is_better],
                             kind="stable").reset_index(drop=True)


def _number(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _quality_text(value: float, q: Quality) -> str:
    return _number(value, 4 if q.higher_is_better else 3)  # accuracies are shares: 0.5312


def pareto_files(frame: pd.DataFrame, sweep_name: str) -> dict[str, str]:
    """The tidy table (harness.sweep.collect.tidy) -> {"pareto.md": ..., "pareto.csv": ...}: per (quality, cost)
    pair, the frontier's configurations in cost order with their quality and cost (the CSV's cost in the
    metric's own unit, bytes for memory; the Markdown's in MB)."""
    data = sweep_data(frame)
    sweeps = None
    if "sweep" in frame.columns:  # `compare` put several sweeps together: say where each configuration's cells are
        cells = _configurations(data, data.ok)
        where = frame.drop_duplicates("cell").set_index("cell")["sweep"].reindex(cells.index)
        sweeps = where.groupby(cells["config"], sort=False).agg(lambda s: ", ".join(dict.fromkeys(s.dropna())))
    sections, rows = [], []
    for q, cost in pairs(data):
        table = points(data, q, cost)
        front = table[table.frontier]
        _, cost_label, scale, decimals = COSTS[cost]
        shown = pd.DataFrame({"configuration": front["config"],
                              cost_label: [_number(v * scale, decimals) for v in front["cost"]],
                              q.label: [_quality_text(v, q) for v in front["quality"]],
                              "seeds": front["seeds"].astype(int).astype(str)})
        if sweeps is not None:
            front = front.assign(sweep=sweeps.reindex(front["config"]).to_numpy())
            shown["sweep"] = front["sweep"].to_numpy()
        sections += [f"## {q.label} vs {cost_label.split(' (')[0]}",
                     (f"`{q.metric}` ({q.direction}) against `{cost}`: {len(front)} of {len(table)} "
                      "configurations on the frontier, cheapest first."),
                     shown.to_markdown(index=False, disable_numparse=True)]
        rows.append(front.drop(columns="frontier").rename(columns={"config": "configuration"}).assign(
            quality_metric=q.metric, direction=q.direction, cost_metric=cost))
    note = paragraph("""A configuration is on the frontier when no other is at least as good in quality and cost
        and better in one (equal configurations both stay). Each value is the mean over a configuration's ok
        seeds that have both metrics.""")
    body = sections or [paragraph("""No Pareto frontier: no quality metric (`perplexity_after`,
        `perplexity_merged`, `<task>/acc[_norm]_after|merged`) beside a cost (`peak_memory_bytes`,
        `trainable_params`, `train_seconds`) for at least two configurations among the ok cells.""")]
    markdown = "\n\n".join([f"# Sweep {sweep_name}: Pareto frontiers", note, *body]) + "\n"
    columns = ["quality_metric", "direction", "cost_metric", "configuration", "quality", "cost", "seeds"]
    csv = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    csv = csv[columns + [c for c in csv.columns if c not in columns]]
    return {"pareto.md": markdown, "pareto.csv": csv.to_csv(index=False)}

