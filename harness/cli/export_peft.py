"""`python -m harness export-peft <sweep dir>`: every finished or failed cell of a sweep as a PEFT
method-comparison result file, <sweep dir>/peft/<method>--<experiment>.json (harness.report.peft_export)."""

from __future__ import annotations

from harness.cli import sweep_dir_argument
from harness.user_error import exits_on_user_error


@exits_on_user_error
def main() -> None:
    from harness.report.peft_export import export_peft

    sweep_dir = sweep_dir_argument("export-peft")
    paths, skipped = export_peft(sweep_dir)
    left = f"; {skipped} skipped cell(s) never ran and have none" if skipped else ""
    print(f"wrote {len(paths)} PEFT result file(s) to {sweep_dir / 'peft'}{left}")
