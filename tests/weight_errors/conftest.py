"""Helpers shared by the weight-error tests: the errors config composed as the command does, and one small run of it
per test session (its outputs are only read)."""

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from harness import config as harness_config
from harness.cli import register_configs
from harness.weight_errors.run import errors_config, run

CODES = ("int4", "fp4", "fp4_e3m0", "nf4")
PAPER = ["int4", "fp4", "fp4_e3m0", "nf4"]  # QLoRA Table 2, worst perplexity first


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(harness_config.EXPERIMENTS_DIR), version_base=None):
        return compose("errors", overrides=list(overrides))


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors")
    # one source of each kind (synthetic, with outliers, model); the full default run takes ~1 minute
    cfg = _compose(
        f"output_dir={out}",
        "numel=16384",
        "formats=[png]",
        "sources=[normal,outliers,tiny_llama]",
        "tiny_llama_layers=1",
    )
    summary = run(cfg)
    return errors_config(cfg), out, summary, pd.read_parquet(out / "weight_errors.parquet")
