"""`python -m harness sweep +grid=<name> [overrides]`: fine-tune every cell of a grid through Hydra's multirun.

The whole grid is composed and validated first (harness.sweep.plan); then Hydra runs the cells with the
configured launcher (harness.sweep.cell, one job per cell), leaving to another sweep on the same output_dir the cells
it is running (harness.sweep.claims) and waiting for them; then every record is collected into
results.parquet/.csv (harness.sweep.collect) and the tables, figures and report.md are written (harness.report).
Exit status: 0 when no cell failed, 1 when some did (their records say why), 2 on a user error before any work.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from harness.cli import hydra_command
from harness.report.markdown import write_everything
from harness.sweep import cell, claims
from harness.sweep.collect import finish
from harness.sweep.plan import plan_sweep
from harness.user_error import exits_on_user_error


@hydra_command("sweep")
def run_job(cfg: DictConfig) -> None:
    """One Hydra job = one cell (in this process, a joblib worker or a SLURM job)."""
    cell.run_job(cfg)


@exits_on_user_error
def main() -> None:
    overrides = [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
    plan = plan_sweep(overrides)
    skipped = [c for c in plan.cells if c.status == "skipped"]
    print(f"sweep {plan.name}: {len(plan.cells)} cells ({len(skipped)} skipped as incompatible) -> {plan.output_dir}",
          flush=True)
    sys.argv = [sys.argv[0], "--multirun", *overrides]  # Hydra's multirun runs the cells
    run_job()
    claims.wait_for_others(plan.output_dir, [c.hash for c in plan.cells])  # a second sweep's share of the cells
    complete = finish(plan)
    reported = write_everything(plan.output_dir) if plan.report else True
    if not complete or not reported:
        sys.exit(1)


if __name__ == "__main__":
    main()
