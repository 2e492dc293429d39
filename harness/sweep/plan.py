"""A sweep before Hydra runs it: every cell composed and validated up front.

Hydra's multirun does the running (its BasicSweeper expands the grid, its launcher runs the cells: in this
process, in joblib workers, or as SLURM jobs through submitit). Here, before it starts, the same expansion is
done with Hydra's own parser and BasicSweeper.split_arguments, and each cell is composed with Hydra's compose
API and planned (harness.training.plan.plan), so a malformed grid or a bad value stops the sweep before the first cell
with one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from harness.config import EXPERIMENTS_DIR
from harness.user_error import UserError, message, validating


@dataclass
class Cell:
    overrides: list[str]  # the job's overrides, as Hydra will pass them
    hash: str
    status: str = "planned"  # planned | skipped (an incompatible pair, with its reason)
    reason: str = ""


@dataclass
class SweepPlan:
    name: str
    output_dir: Path
    cells: list[Cell] = field(default_factory=list)
    paper: dict | None = None  # a paper reproduction's block (experiments/paper/*.yaml), else None
    report: bool = True  # sweep.report: write tables, figures and report.md after collecting


def expand(overrides: list[str], grid_params: dict) -> list[list[str]]:
    """Hydra's BasicSweeper expansion: the grid's hydra.sweeper.params, then the command line (a key given on the
    command line replaces the grid's axis), as a cartesian product -> one override list per cell."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in grid_params.items()] + list(overrides)
    with validating("grid"):
        parsed = parser.parse_overrides(lines)
        return BasicSweeper.split_arguments(parsed, None)[0]


def plan_sweep(overrides: list[str], config_name: str = "sweep") -> SweepPlan:
    """Compose and validate every cell of the sweep the command line describes; raises UserError on the first
    mistake. Incompatible pairs are kept as skipped cells. The schemas must be registered with Hydra first
    (harness.cli.register_configs; the sweep command does it on import)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from adapters.base import IncompatibleError
    from harness.data.corpus import check_corpus, data_config
    from harness.sweep.config import cell_hash, sweep_config
    from harness.training.plan import plan

    with validating("command line"):
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(EXPERIMENTS_DIR), version_base=None):
        with validating():
            top = compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
        params = OmegaConf.select(top, "hydra.sweeper.params")
        params = {} if params is None else OmegaConf.to_container(params, resolve=False) \
            if OmegaConf.is_config(params) else params
        if not isinstance(params, dict):
            raise UserError(f"grid: hydra.sweeper.params must map config keys to comma-separated values, got {params!r}")
        result, corpora = None, set()
        for overrides_of_cell in expand(overrides, params):
            label = " ".join(overrides_of_cell)
            with validating(f"cell [{label}]"):
                node = compose(config_name=config_name, overrides=overrides_of_cell)
                config = sweep_config(node)
            if result is None:
                paper = OmegaConf.select(node, "paper")
                result = SweepPlan(config.sweep.name, Path(config.output_dir),
                                   paper=None if paper is None else OmegaConf.to_container(paper, resolve=True),
                                   report=config.sweep.report)
            cell = Cell(overrides_of_cell, cell_hash(node))
            try:
                with validating(f"cell [{label}]"):
                    plan(config)
                    if config.match_budget:
                        from harness.sweep.budget import with_budget

                        config, budget = with_budget(config)
                        plan(config)
                        cell.reason = f"rank {budget['rank']}: {budget['trainable_params']:,} trainable parameters"
            except UserError as err:
                if not isinstance(err.__cause__, IncompatibleError):
                    raise
                cell.status, cell.reason = "skipped", message(err.__cause__)
            result.cells.append(cell)
            corpora.add((OmegaConf.to_yaml(node.data), config.train.seq_len if config.train.steps else None))
    for text, seq_len in corpora:  # once per corpus (and block length), not per cell
        with validating():
            check_corpus(data_config(OmegaConf.create(text)), seq_len)
    return result
