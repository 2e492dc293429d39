"""`python -m harness memory [model=] [quantizer=] [adapter=] [train.*=]`: predicted training memory for full
fine-tuning, a 16-bit base + adapter and a quantized base + adapter, from the model config alone (meta device;
harness.memory_model does the work)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from harness.config import register_configs
from harness.user_error import exits_on_user_error, validating

register_configs()


@hydra.main(config_path="../../experiments", config_name="memory", version_base=None)
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from harness.memory_model import memory_config, report

    with validating():
        config = memory_config(cfg)
    report(config)
