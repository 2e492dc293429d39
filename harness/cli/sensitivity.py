"""`python -m harness sensitivity [model=] [quantizer=] [data=] [granularity=layer] [top_k=[1,2,4]]`: the
perplexity increase when one group of layers (a block, a projection type, a layer) is quantized and the rest is
not, ranked, as a heatmap, and the mixed-precision plans it suggests (harness.sensitivity does the work)."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_command
from harness.sensitivity.run import check, run


@hydra_command("sensitivity")
def main(cfg: DictConfig) -> None:
    check(cfg)
    run(cfg)
