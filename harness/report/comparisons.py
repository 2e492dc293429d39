"""Paired bootstrap comparisons of perplexity between a sweep's configurations (and each against full
precision): the same text segments under two configurations, resampled together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import stats
from harness.report.configurations import (
    NOT_SWEPT,
    STAGES,
    Configurations,
    label_of,
    ordered,
    paragraph,
    pct,
    show,
)


@dataclass
class Evaluation:
    """One stage of one configuration on one text, per seed; or several configurations whose evaluations are
    identical (the same model scored twice, such as a quantized base shared by cells)."""
    stage: str
    text: str
    cells: list[str]  # a cell of each configuration it stands for, the first one's settings label it
    settings: list[dict]  # each configuration's swept settings (override key -> value)
    seeds: dict = field(default_factory=dict)  # seed -> (nll, tokens), float arrays of shape (segments,)

    def same_as(self, other: Evaluation) -> bool:
        """Identical losses on every seed both have (at least one): the same model, whatever its settings."""
        common = self.seeds.keys() & other.seeds.keys()
        return bool(common) and all(np.array_equal(self.seeds[s][i], other.seeds[s][i]) for s in common
                                    for i in (0, 1))


def settings_of(record: dict) -> dict:
    """The swept settings of a record: its overrides except the seed, the launcher and where it writes."""
    out = {}
    for line in record.get("overrides", []):
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if not key.startswith(NOT_SWEPT):
            out[key] = value
    return out


def evaluations(records: list[dict], conf: Configurations) -> tuple[dict, int]:
    """-> ({(stage, text): [Evaluation, ...] in configuration order, identical ones merged}, how many ok
    records have no per-segment losses)."""
    order = {cell: i for i, cell in enumerate(ordered(conf.cells, conf.labels).index)}
    grouped, missing = {}, 0
    for record in sorted(records, key=lambda r: order.get(r["config_hash"], len(order))):
        if record["status"] != "ok":
            continue
        losses = record.get("losses")
        if not losses:
            missing += 1
            continue
        cell = record["config_hash"]
        config, seed = conf.cells.at[cell, "config"], record["cell"].get("seed", record.get("seed"))
        for stage in ("full_precision", *STAGES):
            if stage in losses:
                key = (stage, losses["text"], config)
                evaluation = grouped.setdefault(key, Evaluation(stage, losses["text"], [cell],
                                                                [settings_of(record)]))
                evaluation.seeds[seed] = (np.asarray(losses[stage]["nll"], dtype=float),
                                          np.asarray(losses[stage]["tokens"], dtype=float))
    merged = {}
    for (stage, text, _), evaluation in grouped.items():
        kept = merged.setdefault((stage, text), [])
        first = next((e for e in kept if e.same_as(evaluation)), None)
        if first is None:
            kept.append(evaluation)
        else:  # a seed only the other configuration ran is the same model's evaluation too
            first.cells += evaluation.cells
            first.settings += evaluation.settings
            first.seeds = evaluation.seeds | first.seeds
    return merged, missing


def _one_setting_apart(a: Evaluation, b: Evaluation) -> bool:
    """Some configuration of a and some of b differ in at most one swept setting (all else equal)."""
    for x in a.settings:
        for y in b.settings:
            if sum(x.get(k) != y.get(k) for k in x.keys() | y.keys()) <= 1:
                return True
    return False


def group_label(conf: Configurations, cells: list[str]) -> str:
    """A configuration's label; for identical evaluations of several, what they share and what they span."""
    if len(cells) == 1:
        return label_of(conf, cells[0])
    rows = conf.cells.loc[cells, conf.labels]
    shared = [f"{c}={show(rows[c].iloc[0])}" for c in conf.labels if rows[c].nunique(dropna=False) == 1]
    spans = [f"{c}={'/'.join(show(v) for v in dict.fromkeys(rows[c]))}" for c in conf.labels
             if rows[c].nunique(dropna=False) > 1]
    return ", ".join(shared + [f"same model at {' and '.join(spans)}"])


def compare(conf: Configurations, a: Evaluation, b: Evaluation, b_label: str, resamples: int, seed: int,
            confidence: float) -> dict | None:
    """A row of the comparisons table, or None when a and b share no seed or are the same evaluation."""
    common = sorted(a.seeds.keys() & b.seeds.keys())
    if not common:
        return None
    nll_a, tok_a = (np.stack([a.seeds[s][i] for s in common]) for i in (0, 1))
    nll_b, tok_b = (np.stack([b.seeds[s][i] for s in common]) for i in (0, 1))
    if nll_a.shape != nll_b.shape or (np.array_equal(nll_a, nll_b) and np.array_equal(tok_a, tok_b)):
        return None
    diff, low, high = stats.paired_bootstrap_ppl_diff(nll_a, tok_a, nll_b, tok_b, resamples, seed, confidence)
    return {"stage": a.stage, "a": group_label(conf, a.cells), "b": b_label,
            "ppl_a": float(stats.perplexity(nll_a, tok_a).mean()),
            "ppl_b": float(stats.perplexity(nll_b, tok_b).mean()), "diff": diff, "low": low, "high": high,
            "seeds": len(common), "segments": nll_a.shape[1],
            "resolved": low is not None and (low > 0 or high < 0)}


def comparisons(records: list[dict], conf: Configurations, resamples: int = 10_000, seed: int = 0,
                confidence: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """Per stage (before, after, merged): each evaluation vs the full-precision reference on the same text,
    then each pair of configurations one swept setting apart -> (the table, notes on what was left out)."""
    found, missing = evaluations(records, conf)
    rows, notes = [], []
    for stage in STAGES:
        for (where, text), group in found.items():
            if where != stage:
                continue
            references = {c: e for e in found.get(("full_precision", text), []) for c in e.cells}
            for a in group:
                reference = references.get(a.cells[0])
                if reference is not None:
                    rows.append(compare(conf, a, reference, "full precision", resamples, seed, confidence))
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    if _one_setting_apart(a, b):
                        label = group_label(conf, b.cells)
                        rows.append(compare(conf, a, b, label, resamples, seed, confidence))
    if missing:
        notes.append(f"{missing} finished cell(s) have no per-segment losses (records written before the "
                     "harness kept them) and are left out; rerun those cells to compare them.")
    columns = ["stage", "a", "b", "ppl_a", "ppl_b", "diff", "low", "high", "seeds", "segments", "resolved"]
    return pd.DataFrame([r for r in rows if r is not None], columns=columns), notes


def comparisons_note(resamples: int, confidence: float, segment_tokens) -> str:
    return paragraph(f"""A − B = perplexity(A) − perplexity(B), both scored on the same text.
        Interval: paired bootstrap {pct(confidence)} interval over the text's segments
        ({segment_tokens} scored tokens each): {resamples:,} resamples of the segments with replacement,
        the same segments for A and B (and for every seed), perplexity recomputed on each as
        exp(sum nll / sum tokens). With several seeds, A − B is the mean over the seeds A and B share of
        the seed-for-seed difference, and ppl A, ppl B are means over those seeds.
        **resolved**: the interval excludes 0, i.e. the difference is larger than what the choice of
        evaluation text explains; the interval covers text sampling only, not seed-to-seed variation
        (the summary's t-intervals show that). Pairs: per stage, each configuration vs the
        full-precision reference, and configurations one swept setting apart; an evaluation shared by
        several configurations (identical losses: the same model) is listed once.""")


def resolved_line(table: pd.DataFrame) -> str:
    resolved = int(table.resolved.sum()) if len(table) else 0
    return f"comparisons: {resolved} resolved, {len(table) - resolved} not resolved (of {len(table)})"


def comparisons_display(table: pd.DataFrame) -> pd.DataFrame:
    def interval(row) -> str:
        return "—" if row.low is None or pd.isna(row.low) else f"[{row.low:+.3f}, {row.high:+.3f}]"

    return pd.DataFrame({"stage": table.stage, "A": table.a, "B": table.b,
                         "ppl A": table.ppl_a.map("{:.3f}".format), "ppl B": table.ppl_b.map("{:.3f}".format),
                         "A − B": table["diff"].map("{:+.3f}".format),
                         "interval": table.apply(interval, axis=1), "seeds": table.seeds.astype(str),
                         "resolved": table.resolved.map({True: "yes", False: "no"})})
