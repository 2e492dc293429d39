"""none: no quantization. The base keeps its weights in the compute dtype (a 16-bit or fp32 base): the
baseline every quantizer is compared with, and the base of plain (16-bit) LoRA."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.base import QuantizedTensor, Quantizer, QuantizerConfig


@QUANTIZERS.register("none", "no quantization: weights stay in the compute dtype (the 16/32-bit baseline)")
@dataclass
class NoneConfig(QuantizerConfig):
    name: str = "none"

    def build(self) -> NoQuantizer:
        return NoQuantizer(self)

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        if self.compute_dtype == "auto":
            raise ValueError("none.storage_bytes needs a resolved compute_dtype (float32, bfloat16 or float16)")
        return math.prod(shape) * torch.finfo(getattr(torch, self.compute_dtype)).bits // 8


class NoQuantizer(Quantizer):
    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        raise ValueError(f"quantizer none keeps {name} unquantized: there is nothing to quantize")
