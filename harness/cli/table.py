"""`python -m harness table <sweep dir>`: a sweep's summary (mean and seed interval per configuration), its
failed and skipped cells and paired perplexity comparisons, as Markdown, LaTeX and CSV in <sweep dir>/tables/;
then <sweep dir>/report.md, which links them."""

from __future__ import annotations

from harness.cli import sweep_dir_argument
from harness.user_error import exits_on_user_error


@exits_on_user_error
def main() -> None:
    from harness.report.markdown import write_report
    from harness.report.tables import write_tables

    sweep_dir = sweep_dir_argument("table")
    summary, count, paths = write_tables(sweep_dir)
    print(summary)
    print(count)
    print(f"wrote {paths[0].parent}/: " + ", ".join(p.name for p in paths))
    print(f"wrote {write_report(sweep_dir)}")
