"""A sweep's report.md: what ran, links to its tables, every figure with a caption, and what failed.

Written by `python -m harness plot` (and `python -m harness table`) from whatever is in the sweep folder: the
records, tables/*.md when the table command wrote them, figures/*.png when the plot command drew them. Links
are relative to the folder, so the report reads on any Git host.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

TABLES = {"tables/summary.md": "configurations: mean and 95% seed interval of each headline metric",
          "tables/comparisons.md": "paired bootstrap comparisons of perplexity on the same text",
          "tables/pareto.md": "Pareto frontiers: the configurations no other beats on both quality and cost",
          "tables/tasks.md": "task accuracy per stage with item-level intervals, and paired comparisons on the "
                             "same items (sweeps with train.tasks)",
          "paper.md": "a paper reproduction: our table beside the published one, and which claims hold"}
OPTIONAL = ("tables/tasks.md", "paper.md")  # written only when the sweep has tasks / reproduces a paper


def _values(column: pd.Series) -> str:
    from harness.report.configurations import ordered, show

    unique = ordered(pd.DataFrame({"v": column.drop_duplicates()}), ["v"])["v"]
    return ", ".join(show(v) for v in unique)


def _first_line(text) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return (str(text).strip().splitlines() or [""])[0]


def describe(data, sweep_dir: Path) -> str:
    """The paragraph: how many cells ended how, which settings vary and which are fixed."""
    from harness.report.configurations import show

    cells = data.cells
    counts = cells.status.value_counts()
    statuses = ", ".join(f"{counts[s]} {s}" for s in ("ok", "failed", "skipped") if s in counts)
    varying = [c for c in data.settings if cells[c].nunique(dropna=False) > 1]
    fixed = [c for c in data.settings if c not in varying and cells[c].notna().any()]
    axes = "; ".join(f"{c} ({_values(cells[c])})" for c in varying)
    text = (f"Sweep `{sweep_dir.name}`: {len(cells)} cells ({statuses}). "
            + (f"The axes that vary: {axes}. " if varying else "No setting varies between its cells. ")
            + (f"The same in every cell: {', '.join(f'{c}={show(cells[c].dropna().iloc[0])}' for c in fixed)}. "
               if fixed else "")
            + "A configuration is every setting but the seed; its seeds are replicates. "
              "Each cell's record is `cells/<hash>/record.json`.")
    return text


def spearman_sentence(rho: float, p: float, n: int) -> str:
    if not math.isfinite(rho):
        return (f"Across the {n} quantizer bases the Spearman rank correlation of weight SQNR and perplexity "
                "increase is undefined (one of them is constant).")
    direction = ("a higher weight SQNR goes with a smaller perplexity increase" if rho < 0 else
                 "a higher weight SQNR goes with a larger perplexity increase" if rho > 0 else
                 "no monotone relation")
    level = "significant" if p < 0.05 else "not significant"
    return (f"Across the {n} quantizer bases, weight SQNR and the perplexity increase over full precision have "
            f"Spearman ρ = {rho:.3f} (p = {p:.3g}; {level} at the 5% level): {direction}.")


def write_report(sweep_dir: Path | str) -> Path:
    """Write <sweep dir>/report.md from the records and whatever tables and figures are there -> its path."""
    from harness.records import read_records, write_atomic
    from harness.registry import FIGURES
    from harness.report.figures_quality import spearman, weight_error_points
    from harness.report.pareto import describe as pareto_figure
    from harness.report.pareto import stem_order
    from harness.report.sweep_data import in_order, label, sweep_data
    from harness.sweep.collect import tidy

    sweep_dir = Path(sweep_dir)
    records = read_records(sweep_dir)
    parts = [f"# Sweep {sweep_dir.name}"]
    data = sweep_data(tidy(records)) if records else None
    if data is None:
        parts.append(f"No cell records under `cells/*/record.json` yet: run the sweep into `{sweep_dir}`.")
    else:
        parts.append(describe(data, sweep_dir))

    lines = []
    for path, what in TABLES.items():
        if (sweep_dir / path).is_file():
            lines.append(f"- [{path}]({path}): {what}")
    missing = [p for p in TABLES if p not in OPTIONAL and not (sweep_dir / p).is_file()]
    if missing:
        lines.append(f"- {' and '.join(f'`{p}`' for p in missing)}: not written yet; run "
                     f"`python -m harness table {sweep_dir}`")
    if (sweep_dir / "results.csv").is_file():
        lines.append("- [results.csv](results.csv): the tidy table, one row per cell x metric "
                     "(also results.parquet)")
    parts += ["## Tables", "\n".join(lines)]

    parts.append("## Figures")
    figures = sweep_dir / "figures"
    pngs = sorted(figures.glob("*.png")) if figures.is_dir() else []
    known = {entry.name: i for i, entry in enumerate(in_order())}
    pngs.sort(key=lambda p: (known.get(p.stem, len(known)), stem_order(p.stem), p.stem))
    if not pngs:
        parts.append(f"No figures in figures/: `python -m harness plot {sweep_dir}` draws each one the sweep's data "
                     "allows and says why it leaves out the others.")
    for png in pngs:
        if png.stem in FIGURES:
            title, caption = FIGURES.get(png.stem).title, FIGURES.entry(png.stem).description
        elif described := pareto_figure(png.stem):  # one of the files the `pareto` entry writes
            title, caption = described
        else:
            title, caption = png.stem.replace("_", " ").capitalize(), ""
        pdf = png.with_suffix(".pdf")
        block = [f"### {title}", f"![{title}](figures/{png.name})"]
        note = caption + (f" ([PDF](figures/{pdf.name}))" if pdf.is_file() else "")
        if note.strip():
            block.append(note.strip())
        if png.stem == "weight_error_vs_perplexity" and data is not None:
            points = weight_error_points(data)
            if len(points) >= 3:
                block.append(spearman_sentence(*spearman(points)))
        parts.append("\n\n".join(block))

    if data is not None:
        columns = [c for c in data.settings if c != "seed" and data.cells[c].nunique(dropna=False) > 1]
        for status, heading in (("failed", "Failed cells"), ("skipped", "Skipped cells")):
            bad = data.cells[data.cells.status == status]
            if status == "skipped" and bad.empty:
                continue
            parts.append(f"## {heading}")
            if bad.empty:
                parts.append("None: every cell that ran finished.")
                continue
            parts.append("\n".join(
                f"- `{cell}` ({label(row, columns) or 'the only configuration'}"
                + (f", seed {row['seed']}" if "seed" in row.index and pd.notna(row['seed']) else "")
                + f"): {_first_line(row['error']) or 'no error recorded'}"
                for cell, row in bad.iterrows()))
    path = write_atomic(sweep_dir / "report.md", "\n\n".join(parts) + "\n")
    return path


def write_everything(sweep_dir: Path | str) -> bool:
    """tables/, figures/ and report.md, as `table` and `plot` write them -> whether it worked. The sweep calls it
    after collecting: a failure here is printed (and the sweep exits 1) but costs no cell's record."""
    import traceback

    from harness.report.figures import make_figures
    from harness.report.tables import write_tables

    try:
        _, count, _ = write_tables(sweep_dir)
        print(count)
        figures = make_figures(sweep_dir, echo=lambda *_: None)
        print(f"{len(figures.written)} figures ({', '.join(figures.written) or 'none'}); "
              f"wrote {write_report(sweep_dir)}")
        return True
    except Exception:  # noqa: BLE001
        print(f"the report could not be written (results.parquet is complete):\n{traceback.format_exc()}")
        return False
