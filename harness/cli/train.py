"""`python -m harness train [model=] [quantizer=] [adapter=] [train.*=] [output_dir=DIR]`: fine-tune one adapter
on one quantized base (harness.train does the work)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from harness.config import register_configs
from harness.user_error import exits_on_user_error, validating

register_configs()


@hydra.main(config_path="../../experiments", config_name="train", version_base=None)
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from harness.train import plan, run, train_config

    with validating():
        config = train_config(cfg)
        plan(config)  # everything checked from the configs alone, before any weight is loaded
    run(config)
