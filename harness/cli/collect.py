"""`python -m harness collect <sweep dir>`: every cell record of a sweep into results.parquet and results.csv."""

from __future__ import annotations

from harness.cli import sweep_dir_argument
from harness.user_error import exits_on_user_error


@exits_on_user_error
def main() -> None:
    from harness.sweep.collect import collect

    sweep_dir = sweep_dir_argument("collect")
    frame = collect(sweep_dir)
    cells = frame.drop_duplicates("cell")
    print(f"{len(cells)} cells ({', '.join(f'{n} {s}' for s, n in cells.status.value_counts().items())}), "
          f"{len(frame)} rows -> {sweep_dir}/results.parquet, results.csv")
