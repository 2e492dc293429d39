"""NF4, NormalFloat4 (QLoRA): 16 levels at quantiles of N(0, 1), normalised to [-1, 1], with an exact 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import norm

from harness.registry import QUANTIZERS
from quantizers.codebook import CodebookConfig

# bitsandbytes' outermost quantile: norm.ppf(OFFSET) ~ 1.85 sigma becomes the level +-1. The QLoRA paper
# describes quantiles of N(0,1); this offset is the one its reference implementation uses.
OFFSET = 0.9677083


def nf4_code(offset: float = OFFSET) -> torch.Tensor:
    """(16,) float32 sorted levels. Asymmetric so that 0 is exact: 8 positive quantiles (9 equal-probability
    points between 1/2 and `offset`, 1/2 dropped), 7 negative ones (8 points, 1/2 dropped), and 0."""
    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].double().numpy())
    negative = -norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].double().numpy())
    # Round the quantiles to float32 before normalising (not after), as bitsandbytes does: the table is then
    # bit-identical to its get_4bit_type('nf4'), so both backends decode the same codes to the same values.
    levels = torch.tensor(sorted([*positive, 0.0, *negative]), dtype=torch.float32)
    return levels / levels.abs().max()


@QUANTIZERS.register("nf4", "NormalFloat4 (QLoRA): normal-quantile 16-level code, blockwise absmax")
@dataclass
class NF4Config(CodebookConfig):
    name: str = "nf4"
    bnb_type = "nf4"

    def code(self) -> torch.Tensor:
        return nf4_code()
