"""One module per command, each exposing main() and doing little more than parse, call and exit. What they
share is here: the Hydra set-up every Hydra command uses, and the sweep-folder argument of collect/table/plot."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore

from harness.config import EXPERIMENTS_DIR
from harness.data.corpus import DataConfig
from harness.evaluation.config import EvalConfig
from harness.memory.report import MemoryConfig
from harness.models.sources import ModelConfig
from harness.registry import ADAPTERS, QUANTIZERS
from harness.sensitivity.config import SensitivityConfig
from harness.sweep.config import SweepConfig
from harness.training.config import TrainConfig
from harness.user_error import UserError, exits_on_user_error, validating
from harness.weight_errors.config import ErrorsConfig

_registered = False


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent). Each quantizer's and adapter's dataclass is stored
    as `<group>/<name>_schema`, which its YAML names in its defaults list, so Hydra type-checks the YAML's values
    against the dataclass; the commands' own schemas as `<command>_schema`."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    for entry in QUANTIZERS:
        cs.store(group="quantizer", name=f"{entry.name}_schema", node=entry.obj)
    for entry in ADAPTERS:
        cs.store(group="adapter", name=f"{entry.name}_schema", node=entry.obj)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    for name, schema in (("errors", ErrorsConfig), ("eval", EvalConfig), ("train", TrainConfig),
                         ("sweep", SweepConfig), ("memory", MemoryConfig), ("sensitivity", SensitivityConfig)):
        cs.store(name=f"{name}_schema", node=schema)
    _registered = True


def hydra_command(config_name: str):
    """Decorator for a command's `main(cfg)`: every schema registered, experiments/<config_name>.yaml composed
    with the command line's overrides, and a UserError printed as one line with exit status 2."""
    register_configs()

    def wrap(main):
        hydra_main = hydra.main(config_path=str(EXPERIMENTS_DIR), config_name=config_name,
                                version_base=None)(exits_on_user_error(main))

        @functools.wraps(main)
        def command(*args, **kwargs):
            if not args and not kwargs:  # run as the command (not handed a config): the command line first
                exits_on_user_error(check_command_line)(config_name, sys.argv[1:])
            return hydra_main(*args, **kwargs)

        return command

    return wrap


def check_command_line(config_name: str, overrides: list[str]) -> None:
    """Compose the command's config with the command line's overrides once before Hydra does: a value of the
    wrong type (train.lr=abc), an unknown key or option is a UserError naming it, where Hydra's own run would
    print its multi-line error and exit 1. Hydra's flags (--multirun, --cfg, --help, ...) are Hydra's to handle;
    a multirun's cells are checked by the sweep's plan (harness.sweep.plan)."""
    if any(arg.startswith("-") for arg in overrides):
        return
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(EXPERIMENTS_DIR), version_base=None), validating():
        compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def sweep_dir_argument(command: str) -> Path:
    """The one argument of collect, table and plot: a sweep's output folder holding cells/<hash>/record.json.
    Anything else raises a UserError that says what is accepted."""
    usage = f"usage: python -m harness {command} <sweep dir> (a sweep's output_dir, e.g. results/sweeps/ranks)"
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise UserError(usage)
    return sweep_dir_checked(Path(sys.argv[1]))


def sweep_dir_checked(sweep_dir: Path) -> Path:
    """`sweep_dir` when it is a folder holding cells/<hash>/record.json, else a UserError that says so."""
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder; give a sweep's output_dir, the folder holding "
                        "cells/<hash>/record.json (e.g. results/sweeps/ranks)")
    if not any(sweep_dir.glob("cells/*/record.json")):
        raise UserError(f"no records under {sweep_dir}/cells/*/record.json; give a sweep's output_dir (e.g. "
                        "results/sweeps/ranks), after `python -m harness sweep` has run a cell")
    return sweep_dir
