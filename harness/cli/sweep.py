"""`python -m harness sweep +grid=<name> [overrides]`: fine-tune every cell of a grid through Hydra's multirun.

The whole grid is composed and validated first (harness.sweep.plan_sweep); then Hydra runs the cells with the
configured launcher (harness.runner.run_cell each); then every record is collected into results.parquet/.csv.
Exit status: 0 when no cell failed, 1 when some did (their records say why), 2 on a user error before any work.
"""

from __future__ import annotations

import sys
import traceback

import hydra
from omegaconf import DictConfig

from harness.config import register_configs
from harness.user_error import exits_on_user_error

register_configs()


@hydra.main(config_path="../../experiments", config_name="sweep", version_base=None)
def run_job(cfg: DictConfig) -> None:
    """One Hydra job = one cell (in this process, a joblib worker or a SLURM job)."""
    from hydra.core.hydra_config import HydraConfig

    from harness.runner import run_cell

    job = HydraConfig.get().job
    overrides = list(HydraConfig.get().overrides.task)
    label = " ".join(o for o in overrides if not o.startswith(("hydra", "+grid")))
    print(f"[cell {job.num}] {label or '(defaults)'}", flush=True)
    record = run_cell(cfg, overrides)
    m = record.get("metrics") or {}
    stages = [f"{m[k]:.3f}" for k in ("perplexity_before", "perplexity_after") if k in m]
    result = (f"perplexity {' -> '.join(stages)}"
              + (f", merged {m['perplexity_merged']:.3f}" if "perplexity_merged" in m else "")) if m else record["error"]
    again = " (done before; kept)" if record.get("reused") else ""
    print(f"[cell {job.num}] {record['status']}{again}: {result}  ({record['seconds']:.0f} s) "
          f"{record['config_hash']}", flush=True)


def write_report_files(sweep_dir) -> bool:
    """tables/, figures/ and report.md, as `table` and `plot` write them -> whether it worked. The results are
    collected already: a failure here is printed (and the sweep exits 1) but costs no cell's record."""
    from harness.report import write_report
    from harness.sweep_plots import make_figures
    from harness.sweep_table import write_tables

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


@exits_on_user_error
def main() -> None:
    from harness.sweep import collect, plan_sweep, summary

    overrides = [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
    plan = plan_sweep(overrides)
    skipped = [c for c in plan.cells if c.status == "skipped"]
    print(f"sweep {plan.name}: {len(plan.cells)} cells ({len(skipped)} skipped as incompatible) -> {plan.output_dir}",
          flush=True)
    sys.argv = [sys.argv[0], "--multirun", *overrides]
    run_job()
    frame = collect(plan.output_dir)
    mine = {c.hash for c in plan.cells}
    table = summary(frame, [c.hash for c in plan.cells])
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    failed = int((table.status == "failed").sum())
    missing = len(mine - set(table.index))
    print(f"wrote {plan.output_dir}/results.parquet and results.csv ({len(table)} of {len(mine)} cells recorded; "
          f"{failed} failed, {int((table.status == 'skipped').sum())} skipped)")
    if plan.paper is not None:
        from harness.paper_sweep import write_paper

        print(write_paper(plan.output_dir, [c.hash for c in plan.cells], plan.paper))
    reported = write_report_files(plan.output_dir) if plan.report else True
    if failed or missing or not reported:
        sys.exit(1)


if __name__ == "__main__":
    main()
