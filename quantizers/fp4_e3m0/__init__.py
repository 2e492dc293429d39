"""FP4 E3M0: sign + 3 exponent bits, no mantissa (QLoRA Table 2's second float format).

The magnitudes are 0 and the powers of two 2**-6 .. 2**0 after normalising the largest to 1: fine steps
near zero, coarse ones near the block maximum. bitsandbytes has no kernel for it (reference only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.codebook import CodebookConfig


@QUANTIZERS.register("fp4_e3m0", "FP4 E3M0: powers of two 2^-6..1 and 0, blockwise absmax (reference only)")
@dataclass
class FP4E3M0Config(CodebookConfig):
    name: str = "fp4_e3m0"

    def code(self) -> torch.Tensor:
        # exponent field e = 0 encodes zero (a subnormal with no mantissa bits); e = 1..7 -> 2**(e - 7)
        magnitudes = [0.0] + [2.0 ** (e - 7) for e in range(1, 8)]
        return torch.tensor(magnitudes + [-m for m in magnitudes], dtype=torch.float32)
