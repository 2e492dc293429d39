"""int4: symmetric absmax integer grid, codes -7..7 (q = round(7 x / absmax)), blockwise.

Stored as a codebook so it shares the nf4/fp4 machinery: index i holds (i - 7) / 7 for i = 0..14. Index 15
would be -8, which a symmetric absmax grid never produces; it repeats 0 so the table has 16 entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.codebook import CodebookConfig


@QUANTIZERS.register("int4", "int4 absmax, symmetric (codes -7..7), blockwise (reference only)")
@dataclass
class Int4Config(CodebookConfig):
    name: str = "int4"

    def code(self) -> torch.Tensor:
        return torch.tensor([(i - 7) / 7 for i in range(15)] + [0.0], dtype=torch.float32)
