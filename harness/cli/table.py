"""`python -m harness table <sweep dir>`: a sweep's summary (mean and seed interval per configuration), its
failed and skipped cells and paired perplexity comparisons, as Markdown, LaTeX and CSV
in <sweep dir>/tables/."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.user_error import UserError, exits_on_user_error

USAGE = "usage: python -m harness table <sweep dir> (a sweep's output_dir, e.g. results/sweeps/ranks)"


@exits_on_user_error
def main() -> None:
    from harness.sweep_table import write_tables

    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise UserError(USAGE)
    sweep_dir = Path(sys.argv[1])
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder; give a sweep's output_dir, the folder holding "
                        "cells/<hash>/record.json (e.g. results/sweeps/ranks)")
    summary, count, paths = write_tables(sweep_dir)
    print(summary)
    print(count)
    print(f"wrote {paths[0].parent}/: " + ", ".join(p.name for p in paths))
