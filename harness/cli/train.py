"""`python -m harness train [model=] [quantizer=] [adapter=] [train.*=] [output_dir=DIR]`: fine-tune one adapter
on one quantized base (harness.training does the work)."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_command
from harness.user_error import validating


@hydra_command("train")
def main(cfg: DictConfig) -> None:
    from harness.training.config import train_config
    from harness.training.plan import plan
    from harness.training.run import run

    from harness.data.corpus import check_corpus

    with validating():
        config = train_config(cfg)
        p = plan(config)  # everything checked from the configs alone, before any weight is loaded
        check_corpus(p.data, p.train.seq_len if p.train.steps else None)  # and the text, before the model
    run(config)
