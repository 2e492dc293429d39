"""`python -m harness collect <sweep dir>`: every cell record of a sweep into results.parquet and results.csv."""

from __future__ import annotations

import sys

from harness.user_error import UserError, exits_on_user_error


@exits_on_user_error
def main() -> None:
    from harness.sweep import collect

    if len(sys.argv) != 2:
        raise UserError("usage: python -m harness collect <sweep dir> (a sweep's output_dir, e.g. results/sweeps/ranks)")
    frame = collect(sys.argv[1])
    cells = frame.drop_duplicates("cell")
    print(f"{len(cells)} cells ({', '.join(f'{n} {s}' for s, n in cells.status.value_counts().items())}), "
          f"{len(frame)} rows -> {sys.argv[1]}/results.parquet, results.csv")
