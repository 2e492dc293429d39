"""`python -m harness table`'s tables: a sweep's configurations x headline metrics with seed intervals, its
failed and skipped cells, and paired bootstrap comparisons of perplexity, as Markdown, LaTeX and CSV.

A configuration is a cell's settings except its seed; its seeds are replicates (harness/stats.py says how they
are summarised). Comparisons pair two evaluations of the same text segment for segment (record["losses"]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import stats

# headline metric -> (column title, scale, decimals when there is no interval)
HEADLINE = {
    "perplexity_full_precision": ("ppl full precision", 1.0, 3),
    "perplexity_before": ("ppl before", 1.0, 3),
    "perplexity_after": ("ppl after", 1.0, 3),
    "perplexity_merged": ("ppl merged", 1.0, 3),
    "trainable_params": ("trainable params", 1.0, 0),
    "train_tokens_per_second": ("train tokens/s", 1.0, 1),
    "peak_memory_bytes": ("peak memory (MB)", 1e-6, 1),
    "bits_per_param": ("bits/param", 1.0, 3),
}
STAGES = ("before", "after", "merged")
NOT_SETTINGS = {"cell", "status", "error", "metric", "value", "seed"}
# override keys that are not settings of the model: where it runs and writes, and the replicate axis
NOT_SWEPT = ("hydra", "grid", "output_dir", "train.seed")


@dataclass
class Configurations:
    cells: pd.DataFrame  # per cell (index: its hash): config (an id), seed, status, error, its settings
    labels: list[str]  # the settings that vary across configurations: the tables' row labels
    fixed: dict  # the settings every cell shares


def show(value) -> str:
    """A setting's value as text: 8.0 -> '8', NaN -> '—'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def configurations(frame: pd.DataFrame) -> Configurations:
    """The tidy table (harness.sweep.tidy) -> its cells grouped into configurations (all settings but the
    seed)."""
    cells = frame.drop_duplicates("cell").set_index("cell")
    settings = [c for c in cells.columns if c not in NOT_SETTINGS]
    values = cells[settings].astype(object).where(cells[settings].notna(), None)
    cells = cells.assign(config=[tuple(row) for row in values.itertuples(index=False)])
    varying = [c for c in settings if cells[c].nunique(dropna=False) > 1]
    labels = varying or [c for c in ("quantizer", "adapter", "rank") if c in settings]
    fixed = {c: show(values[c].iloc[0]) for c in settings if c not in varying}
    return Configurations(cells, labels, fixed)


def ordered(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Sort by the given settings: numbers as numbers, anything else as text."""
    if not columns:
        return table
    return table.sort_values(columns, na_position="last", kind="stable",
                             key=lambda s: s if pd.api.types.is_numeric_dtype(s) else s.astype(str))


def _status_text(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    return ", ".join(f"{counts[s]} {s}" for s in ("ok", "failed", "skipped") if s in counts)


def summary_table(frame: pd.DataFrame, conf: Configurations, confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration: its labels, `cells` (statuses of its seeds), and per headline metric present
    <name>_mean, _low, _high, _n over its ok seeds (low/high empty with one seed; peak memory in MB)."""
    ok = frame[(frame.status == "ok") & frame.metric.isin(list(HEADLINE))]
    values = ok.pivot_table(index="cell", columns="metric", values="value", aggfunc="first")
    metrics = [m for m in HEADLINE if m in values.columns]
    rows = []
    for _, cells in conf.cells.groupby("config", sort=False):
        row = {c: cells[c].iloc[0] for c in conf.labels} | {"cells": _status_text(cells.status)}
        for metric in metrics:
            scale = HEADLINE[metric][1]
            seeds = values[metric].reindex(cells.index).to_numpy(dtype=float) * scale
            mean, low, high, n = stats.t_interval(seeds, confidence)
            name = "peak_memory_mb" if metric == "peak_memory_bytes" else metric
            row |= {f"{name}_mean": mean, f"{name}_low": low, f"{name}_high": high, f"{name}_n": n}
        rows.append(row)
    return ordered(pd.DataFrame(rows), conf.labels).reset_index(drop=True)


def _mean_text(mean: float, low, high, n: int, decimals: int) -> str:
    """`mean ± half-width (n=..)`, the half-width to 2 significant digits and the mean to the same place; no ±
    when there is no interval (n < 2) or when every seed gave the same value."""
    if n == 0 or math.isnan(mean):
        return "—"
    if low is None or pd.isna(low) or not high - low > 0:
        return f"{mean:,.{decimals}f} (n={n})"
    half = (high - low) / 2
    places = min(6, max(0, 1 - math.floor(math.log10(half))))
    return f"{mean:,.{places}f} ± {half:,.{places}f} (n={n})"


def summary_display(table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """The summary as text cells, columns titled for people."""
    out = pd.DataFrame({c: table[c].map(show) for c in labels + ["cells"]})
    for metric, (title, _, decimals) in HEADLINE.items():
        name = "peak_memory_mb" if metric == "peak_memory_bytes" else metric
        if f"{name}_mean" in table:
            out[title] = [_mean_text(r[f"{name}_mean"], r[f"{name}_low"], r[f"{name}_high"], r[f"{name}_n"],
                                     decimals) for _, r in table.iterrows()]
    return out


def problems(conf: Configurations) -> pd.DataFrame:
    """The failed and skipped cells: configuration, seed, status, the first line of the error."""
    bad = conf.cells[conf.cells.status != "ok"]
    return pd.DataFrame({"configuration": [label_of(conf, cell) for cell in bad.index],
                         "seed": [show(s) for s in bad.get("seed", pd.Series(None, index=bad.index))],
                         "status": bad.status.tolist(),
                         "error": [(str(e or "").strip().splitlines() or [""])[0] for e in bad.error]})


def label_of(conf: Configurations, cell: str) -> str:
    return ", ".join(f"{c}={show(conf.cells.at[cell, c])}" for c in conf.labels) or "all cells"


# ---------------------------------------------------------------- paired comparisons


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
        for stage in ("full_precision",) + STAGES:
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


# ---------------------------------------------------------------- files


def _pct(confidence: float) -> str:
    return f"{100 * confidence:g}%"


def _tex(text: str) -> str:
    """Text as LaTeX source: its special characters escaped, then ± and — as LaTeX writes them."""
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                          ("^", r"\textasciicircum{}")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace("—", "--").replace("−", "$-$")


def latex(display: pd.DataFrame, caption: str, label: str) -> str:
    """A table of text cells as a booktabs LaTeX table (escaped here, so pandas does not escape again)."""
    body = display.map(lambda v: _tex(str(v)))
    body.columns = [_tex(str(c)) for c in display.columns]
    return body.to_latex(index=False, escape=False, caption=_tex(caption), label=label, position="htbp")


def _markdown(display: pd.DataFrame) -> str:
    # a | inside a cell (an error message) would split it in two
    return display.map(lambda v: str(v).replace("|", r"\|")).to_markdown(index=False, disable_numparse=True)


def _paragraph(text: str) -> str:
    return " ".join(text.split())


def summary_note(confidence: float) -> str:
    return _paragraph(f"""Each metric: the mean over a configuration's seeds ± the half-width of the
        {_pct(confidence)} confidence interval of that mean (Student t with n−1 degrees of freedom:
        mean ± t * s / sqrt(n)), n = the seeds that finished. No ± when n = 1 (one seed gives no interval) or
        when every seed gave the same value. Peak memory in MB (1e6 bytes).""")


def comparisons_note(resamples: int, confidence: float, segment_tokens) -> str:
    return _paragraph(f"""A − B = perplexity(A) − perplexity(B), both scored on the same text.
        Interval: paired bootstrap {_pct(confidence)} interval over the text's segments
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


def write_tables(sweep_dir: Path | str, resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[str, str, list[Path]]:
    """Collect the sweep's records afresh and write <sweep dir>/tables/summary.{md,tex,csv} and
    comparisons.{md,tex,csv} -> (the summary's Markdown, the resolved count line, the paths written)."""
    from harness.records import read_records, write_atomic
    from harness.sweep import collect

    sweep_dir = Path(sweep_dir)
    frame = collect(sweep_dir)
    records = read_records(sweep_dir)
    conf = configurations(frame)
    table = summary_table(frame, conf, confidence)
    shown = summary_display(table, conf.labels)
    fixed = ", ".join(f"{k}={v}" for k, v in conf.fixed.items())
    bad = problems(conf)
    summary_md = "\n\n".join([
        f"# Sweep {sweep_dir.name}: configurations", summary_note(confidence),
        f"Rows: the settings (all but the seed) that vary across cells. In every cell: {fixed or '—'}.",
        _markdown(shown), "## Failed and skipped cells",
        _markdown(bad) if len(bad) else "None: every cell finished."]) + "\n"
    pairs, notes = comparisons(records, conf, resamples, seed, confidence)
    segment = next((r["losses"].get("segment_tokens") for r in records if r.get("losses")), None)
    count = resolved_line(pairs)
    finished = [r for r in records if r["status"] == "ok"]
    if len(pairs):
        body = _markdown(comparisons_display(pairs))
    elif not finished:
        body = "No comparisons: no cell finished."
    elif not any(r.get("losses") for r in finished):
        body = ("No comparisons: the records have no per-segment losses (a sweep from before the harness "
                "kept them). Rerun its cells to compare configurations.")
    else:
        body = "No comparisons: no two different evaluations of the same text."
    note = comparisons_note(resamples, confidence, segment)
    title = f"# Sweep {sweep_dir.name}: paired perplexity comparisons"
    comparisons_md = "\n\n".join([title, note, count, body, *notes]) + "\n"
    out = sweep_dir / "tables"
    files = {
        "summary.md": summary_md,
        "summary.tex": latex(shown, summary_note(confidence) + (f" Settings: {fixed}." if fixed else ""),
                             "tab:summary"),
        "summary.csv": table.to_csv(index=False),
        "comparisons.md": comparisons_md,
        "comparisons.tex": latex(comparisons_display(pairs), note.replace("**", ""), "tab:comparisons"),
        "comparisons.csv": pairs.to_csv(index=False),
    }
    paths = [write_atomic(out / name, text) for name, text in files.items()]
    return summary_md, count, paths
