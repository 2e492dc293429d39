"""`python -m harness compare <sweep dir> <sweep dir> ... [--out DIR]`: several sweeps in one set of tables, one
set of figures and one report.md (default DIR: results/compare/<the sweeps' folder names joined by '+'>).

The out folder is made a sweep folder of its own, so the one-sweep code writes everything: the union of the
sweeps' cell records (cells/<hash>/record.json) and their bases/ files, each record marked with the sweep it came
from (`sweep`, a column of results.csv). A cell's hash covers its resolved config but not where its sweep writes,
so a cell run by two sweeps is kept once (an ok record before a failed or skipped one, else the first sweep
named), and evaluations that are the same (a shared quantized base) pair up in the comparisons across sweeps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.cli import sweep_dir_checked
from harness.user_error import UserError, exits_on_user_error

USAGE = ("usage: python -m harness compare <sweep dir> <sweep dir> ... [--out DIR] (two or more sweeps' output_dirs; "
         "default DIR: results/compare/<their names joined by '+'>)")


def arguments(argv: list[str]) -> tuple[list[Path], Path | None]:
    """The command line -> (the sweep folders, checked, in the order given; --out or None)."""
    dirs, out, rest = [], None, list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--out" or arg.startswith("--out="):
            value = arg.partition("=")[2] or (rest.pop(0) if rest and arg == "--out" else "")
            if not value:
                raise UserError(f"--out needs a folder; {USAGE}")
            out = Path(value)
        elif arg.startswith("-"):
            raise UserError(f"unknown option {arg}; {USAGE}")
        else:
            dirs.append(Path(arg))
    if len(dirs) < 2:
        raise UserError(f"needs two or more sweep folders, got {len(dirs)}; {USAGE}")
    for d in dirs:
        sweep_dir_checked(d)
    seen = {}
    for d in dirs:
        if d.resolve() in seen:
            raise UserError(f"{d} is named twice ({seen[d.resolve()]} and {d}); name each sweep once")
        seen[d.resolve()] = d
    return dirs, out


@exits_on_user_error
def main() -> None:
    from harness.report.compare import check_out, materialise, sweep_names, union
    from harness.report.figures import make_figures
    from harness.report.markdown import write_report
    from harness.report.tables import write_tables

    dirs, out = arguments(sys.argv[1:])
    names = sweep_names(dirs)
    out = out or Path("results/compare") / "+".join(n.replace("/", "_") for n in names)
    check_out(out, dirs)
    records, dropped = union(dirs, names)
    materialise(out, dirs, names, records, dropped)
    print(f"{len(records)} cells from {len(dirs)} sweeps ({', '.join(names)}); {dropped} duplicate records "
          "dropped (a config hash in several sweeps is kept once, an ok record first)")
    _, count, paths = write_tables(out)
    print(count)
    print(f"wrote {paths[0].parent}/: " + ", ".join(p.name for p in paths))
    result = make_figures(out)
    print(f"{len(result.written)} figures written, {len(result.skipped)} skipped -> {out / 'figures'}")
    print(f"wrote {write_report(out)}")
