"""`python -m harness table`'s tables: a sweep's configurations x headline metrics with seed intervals, its
failed and skipped cells, and paired bootstrap comparisons of perplexity, as Markdown, LaTeX and CSV.

A configuration is a cell's settings except its seed; its seeds are replicates (harness/stats.py says how they
are summarised). Comparisons pair two evaluations of the same text segment for segment (record["losses"]).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness import stats
from harness.report.comparisons import comparisons, comparisons_display, comparisons_note, resolved_line
from harness.report.configurations import (
    Configurations,
    configurations,
    label_of,
    ordered,
    paragraph,
    pct,
    show,
)
from harness.report.pareto import pareto_files
from harness.report.task_tables import task_files

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


def summary_note(confidence: float) -> str:
    return paragraph(f"""Each metric: the mean over a configuration's seeds ± the half-width of the
        {pct(confidence)} confidence interval of that mean (Student t with n−1 degrees of freedom:
        mean ± t * s / sqrt(n)), n = the seeds that finished. No ± when n = 1 (one seed gives no interval) or
        when every seed gave the same value. Peak memory in MB (1e6 bytes).""")


def write_tables(sweep_dir: Path | str, resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[str, str, list[Path]]:
    """Collect the sweep's records afresh and write <sweep dir>/tables/summary.{md,tex,csv},
    comparisons.{md,tex,csv} and pareto.{md,csv} -> (the summary's Markdown, the resolved count line, the paths
    written)."""
    from harness.records import read_records, write_atomic
    from harness.sweep.collect import collect

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
        **pareto_files(frame, sweep_dir.name),
        **task_files(records, conf, sweep_dir.name, resamples, seed, confidence),
    }
    paths = [write_atomic(out / name, text) for name, text in files.items()]
    return summary_md, count, paths
