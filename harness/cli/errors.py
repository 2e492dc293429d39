"""`python -m harness errors [hydra overrides]`: the quantization error of weights under every quantizer.

harness.weight_errors.run does the work. Writes to output_dir: weight_errors.parquet/.csv (tidy, one row per source x tensor x quantizer x metric),
summary.md (the tested claims about the 4-bit codes), ordering.md (the README table) and the figures.
Examples:
    python -m harness errors numel=262144 sources=[normal,laplace]
    python -m harness errors +quantizer@quantizers.nf4_b128=nf4 quantizers.nf4_b128.block_size=128
"""

from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_command
from harness.user_error import validating
from harness.weight_errors.run import errors_config, run


@hydra_command("errors")
def main(cfg: DictConfig) -> None:
    with validating():
        config = errors_config(cfg)  # every field and quantizer checked before any tensor is drawn
    run(config)
