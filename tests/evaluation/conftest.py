"""Helpers shared by the evaluation tests: a tiny in-process model, the eval config composed as the command does."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from harness.cli import register_configs
from harness.config import EXPERIMENTS_DIR
from harness.models.sources import ModelConfig, load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(name="tiny-llama", source="tiny", arch="llama", max_positions=512))


def compose_eval(overrides):
    register_configs()
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        return compose("eval", overrides=overrides)
