"""Helpers shared by the sensitivity tests: the sensitivity config composed as the command does."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from harness.cli import register_configs
from harness.config import EXPERIMENTS_DIR


def compose_sensitivity(overrides):
    register_configs()
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        return compose("sensitivity", overrides=overrides)
