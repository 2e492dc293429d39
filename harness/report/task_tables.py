"""A sweep's task scores (train.tasks) as tables: every configuration's accuracy per task, metric and stage with an
item-level interval, and paired comparisons on the same items, from the per-item results the records keep
(record["items"]: {task: {"key", "doc_id", stage: {metric: [one value per item]}}}).

Accuracy on a few hundred items moves by several points between two models by chance alone; two models answering
the same items share which items are easy, so their difference is far better determined than either score: the
comparisons resample items with the same indices for both (harness.stats.bootstrap_item_mean).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness import stats
from harness.report.comparisons import settings_of
from harness.report.configurations import Configurations, label_of, ordered, paragraph, pct

TASK_STAGES = {"full_precision": "full precision", "before": "before", "after": "after", "merged": "merged"}
# per-item metrics whose mean is the task score lm-eval reports (acc_stderr and the like are not per item)
ITEM_METRICS = ("acc", "acc_norm", "exact_match")
# pairs of stages of one configuration worth a paired test: what fine-tuning won, what merging lost
WITHIN = (("after", "before"), ("merged", "after"), ("after", "full_precision"), ("merged", "full_precision"))


def item_scores(records: list[dict], conf: Configurations) -> dict:
    """-> {(config, task, metric, stage): (key, {seed: per-item values})} over the ok records that kept items;
    a configuration's seeds are kept together only when they scored the same items (the same key)."""
    found: dict = {}
    for record in records:
        cell = record["config_hash"]
        if record["status"] != "ok" or not record.get("items") or cell not in conf.cells.index:
            continue
        config, seed = conf.cells.at[cell, "config"], record["cell"].get("seed", record.get("seed"))
        for task, entry in record["items"].items():
            for stage in TASK_STAGES:
                for metric, values in (entry.get(stage) or {}).items():
                    if metric not in ITEM_METRICS:
                        continue
                    key, seeds = found.setdefault((config, task, metric, stage), (entry["key"], {}))
                    if key == entry["key"]:
                        seeds[seed] = np.asarray(values, dtype=float)
    return found


def _cells_of(conf: Configurations) -> dict:
    """config -> its first cell (whose settings label it)."""
    first: dict = {}
    for cell, config in conf.cells["config"].items():
        first.setdefault(config, cell)
    return first


def task_summary(records: list[dict], conf: Configurations, resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration x task x metric: per stage the score (mean over seeds), its item-level
    interval, and the seeds and items behind it."""
    found = item_scores(records, conf)
    first = _cells_of(conf)
    rows: dict = {}
    for (config, task, metric, stage), (_, seeds) in found.items():
        matrix = np.stack([seeds[s] for s in sorted(seeds, key=str)])
        value, low, high = stats.bootstrap_item_mean(matrix, resamples=resamples, seed=seed, confidence=confidence)
        row = rows.setdefault((config, task, metric), {
            **{c: conf.cells.at[first[config], c] for c in conf.labels}, "task": task, "metric": metric})
        row |= {f"{stage}": value, f"{stage}_low": low, f"{stage}_high": high, f"{stage}_seeds": len(seeds),
                "items": matrix.shape[1]}
    if not rows:
        return pd.DataFrame()
    return ordered(pd.DataFrame(list(rows.values())), conf.labels + ["task", "metric"]).reset_index(drop=True)


def task_comparisons(records: list[dict], conf: Configurations, resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> pd.DataFrame:
    """Paired differences on the same items: within each configuration (after - before, merged - after, each
    against full precision), then between configurations one swept setting apart at the same stage."""
    found = item_scores(records, conf)
    first = _cells_of(conf)
    settings = {config: settings_of(next(r for r in records if r["config_hash"] == cell))
                for config, cell in first.items()}

    def row(task, metric, a_key, b_key, a_label, b_label, stage):
        a_seeds, b_seeds = found[a_key][1], found[b_key][1]
        common = sorted(a_seeds.keys() & b_seeds.keys(), key=str)
        if not common or found[a_key][0] != found[b_key][0]:
            return None  # no seed in common, or other items
        a = np.stack([a_seeds[s] for s in common])
        b = np.stack([b_seeds[s] for s in common])  # the same answers give 0 [0, 0]: no item changed
        diff, low, high = stats.bootstrap_item_mean(a, b, resamples=resamples, seed=seed, confidence=confidence)
        return {"task": task, "metric": metric, "stage": stage, "a": a_label, "b": b_label,
                "score_a": float(a.mean()), "score_b": float(b.mean()), "diff": diff, "low": low, "high": high,
                "seeds": len(common), "items": a.shape[1], "resolved": low is not None and (low > 0 or high < 0)}

    rows = []
    configs = [c for c in dict.fromkeys(ordered(conf.cells, conf.labels)["config"]) if c in first]
    for config in configs:
        label = label_of(conf, first[config])
        for (c, task, metric, stage), _ in found.items():
            if c != config:
                continue
            for a_stage, b_stage in WITHIN:
                if stage == a_stage and (config, task, metric, b_stage) in found:
                    rows.append(row(task, metric, (config, task, metric, a_stage), (config, task, metric, b_stage),
                                    f"{label} {TASK_STAGES[a_stage]}", f"{label} {TASK_STAGES[b_stage]}",
                                    f"{a_stage} − {b_stage}"))
    for i, x in enumerate(configs):
        for y in configs[i + 1:]:
            apart = sum(settings[x].get(k) != settings[y].get(k) for k in settings[x].keys() | settings[y].keys())
            if apart != 1:
                continue
            for (c, task, metric, stage), _ in found.items():
                if c == x and stage in ("after", "merged") and (y, task, metric, stage) in found:
                    rows.append(row(task, metric, (x, task, metric, stage), (y, task, metric, stage),
                                    label_of(conf, first[x]), label_of(conf, first[y]), stage))
    columns = ["task", "metric", "stage", "a", "b", "score_a", "score_b", "diff", "low", "high", "seeds", "items",
               "resolved"]
    return pd.DataFrame([r for r in rows if r is not None], columns=columns)


def _score(value, low, high) -> str:
    if value is None or pd.isna(value):
        return "—"
    return f"{value:.3f}" + ("" if low is None or pd.isna(low) else f" [{low:.3f}, {high:.3f}]")


def summary_display(table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    out = table[labels + ["task", "metric"]].astype(str).copy()
    for stage, title in TASK_STAGES.items():
        if stage in table:
            out[title] = [_score(r[stage], r[f"{stage}_low"], r[f"{stage}_high"]) for _, r in table.iterrows()]
    out["items"] = table["items"].astype(int).astype(str)
    return out


def comparisons_display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": table.task, "metric": table.metric, "stage": table.stage, "A": table.a, "B": table.b,
        "A − B": table["diff"].map("{:+.3f}".format),
        "interval": [("—" if pd.isna(lo) else f"[{lo:+.3f}, {hi:+.3f}]") for lo, hi in zip(table.low, table.high)],
        "seeds": table.seeds.astype(str), "items": table["items"].astype(str),
        "resolved": table.resolved.map({True: "yes", False: "no"})})


def tasks_note(resamples: int, confidence: float) -> str:
    return paragraph(f"""Scores: the mean of lm-eval's per-item values (acc: 1 when the right choice has the
        highest log-likelihood; acc_norm: the same per byte), averaged over a configuration's seeds.
        [low, high]: item-level {pct(confidence)} bootstrap interval ({resamples:,} resamples of the items with
        replacement, the same items for every seed): how much the score depends on which items were drawn.
        Comparisons: A − B on the same items, resampled together (a paired test, not two independent
        intervals), within each configuration between stages and between configurations one swept setting
        apart; **resolved**: the interval excludes 0.""")


def task_files(records: list[dict], conf: Configurations, name: str, resamples: int, seed: int,
               confidence: float) -> dict[str, str]:
    """tables/tasks.{md,csv} and task_comparisons.csv when some ok cell kept per-item task results, else none."""
    summary = task_summary(records, conf, resamples, seed, confidence)
    if summary.empty:
        return {}
    pairs = task_comparisons(records, conf, resamples, seed, confidence)
    resolved = int(pairs.resolved.sum()) if len(pairs) else 0
    md = "\n\n".join([
        f"# Sweep {name}: task scores", tasks_note(resamples, confidence), "## Scores per configuration",
        _markdown(summary_display(summary, conf.labels)), "## Paired comparisons on the same items",
        f"comparisons: {resolved} resolved, {len(pairs) - resolved} not resolved (of {len(pairs)})",
        _markdown(comparisons_display(pairs)) if len(pairs) else "No two different scorings of the same items."])
    return {"tasks.md": md + "\n", "tasks.csv": summary.to_csv(index=False),
            "task_comparisons.csv": pairs.to_csv(index=False)}


def _markdown(display: pd.DataFrame) -> str:
    return display.map(lambda v: str(v).replace("|", r"\|")).to_markdown(index=False, disable_numparse=True)
