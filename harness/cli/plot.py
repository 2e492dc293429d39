"""`python -m harness plot <sweep dir>`: a sweep's figures (PNG and PDF under <sweep dir>/figures/), each drawn
when the grid has the data for it, then <sweep dir>/report.md."""

from __future__ import annotations

from harness.cli import sweep_dir_argument
from harness.user_error import exits_on_user_error


@exits_on_user_error
def main() -> None:
    from harness.report.figures import make_figures
    from harness.report.markdown import write_report

    sweep_dir = sweep_dir_argument("plot")
    result = make_figures(sweep_dir)
    print(f"{len(result.written)} figures written, {len(result.skipped)} skipped -> {sweep_dir / 'figures'}")
    print(f"wrote {write_report(sweep_dir)}")
