"""One module per command; each exposes main()."""

from __future__ import annotations

import sys
from pathlib import Path


def sweep_dir_argument(command: str) -> Path:
    """The one argument of collect, table and plot: a sweep's output folder holding cells/<hash>/record.json.
    Anything else raises a UserError that says what is accepted."""
    from harness.user_error import UserError

    usage = f"usage: python -m harness {command} <sweep dir> (a sweep's output_dir, e.g. results/sweeps/ranks)"
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise UserError(usage)
    sweep_dir = Path(sys.argv[1])
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder; give a sweep's output_dir, the folder holding "
                        "cells/<hash>/record.json (e.g. results/sweeps/ranks)")
    if not any(sweep_dir.glob("cells/*/record.json")):
        raise UserError(f"no records under {sweep_dir}/cells/*/record.json; give a sweep's output_dir (e.g. "
                        "results/sweeps/ranks), after `python -m harness sweep` has run a cell")
    return sweep_dir
