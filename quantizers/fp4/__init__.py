"""FP4 E2M1 with bitsandbytes' code values (its own exponent bias: the smallest subnormal is 1/192)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.codebook import CodebookConfig

# Index = the stored 4-bit code (sign bit 8), as bitsandbytes assigns them, so codes are interchangeable
# with its kernels. Unnormalised, these are the E2M1 values 0, 1/32, 4, 6, 2, 3, 1, 1.5 divided by 6.
_MAGNITUDES = [0.0, 1 / 192, 2 / 3, 1.0, 1 / 3, 1 / 2, 1 / 6, 1 / 4]


@QUANTIZERS.register("fp4", "FP4 E2M1 (bitsandbytes' values): 2 exponent + 1 mantissa bits, blockwise absmax")
@dataclass
class FP4Config(CodebookConfig):
    name: str = "fp4"
    bnb_type = "fp4"

    def code(self) -> torch.Tensor:
        return torch.tensor(_MAGNITUDES + [-m for m in _MAGNITUDES], dtype=torch.float32)
