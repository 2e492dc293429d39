"""`python -m harness memory [model=] [quantizer=] [adapter=] [train.*=]`: predicted training memory for full
fine-tuning, a 16-bit base + adapter and a quantized base + adapter, from the model config alone (meta device;
harness.memory does the work)."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_command
from harness.user_error import validating


@hydra_command("memory")
def main(cfg: DictConfig) -> None:
    from harness.memory.report import check, memory_config, report

    with validating():
        config = memory_config(cfg)
        check(config)
    report(config)
