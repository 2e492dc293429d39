"""`python -m harness eval [model=...] [data=...] [+paper=qlora_table2]`: perplexity (and lm-eval tasks) of a model
in full precision and under each configured quantizer, as one tidy table plus a paper table when asked for.
(harness.evaluation.run does the work.)
"""

from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_command
from harness.evaluation.run import check, run


@hydra_command("eval")
def main(cfg: DictConfig) -> None:
    check(cfg)
    run(cfg)
