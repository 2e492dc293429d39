"""intk: asymmetric min-max integer quantization with a zero point, group-wise along the input dimension.

w ~ (q - zero_point) * scale with q in [0, 2**k - 1], one (scale, zero_point) per `group_size` consecutive
input features of each row. This is GPTQ's storage format and the base QA-LoRA needs: an adapter whose
update is constant within a group folds into that group's zero point, so the merged model stays int-k.
The range always includes 0 (as GPTQ does), which makes an exact 0 representable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers import packing
from quantizers.base import (
    Backend,
    PerGroup,
    QuantizedTensor,
    Quantizer,
    QuantizerConfig,
    check_block_size,
    check_finite,
)

BITS = (2, 3, 4, 8)


@dataclass
class IntKFormat(QuantizerConfig):
    """What every quantizer writing intk's format shares (intk, and GPTQ, AWQ, HQQ, which choose the codes
    differently): bits and group_size with their checks, the storage, and the class attribute group_zero_points
    that QA-LoRA reads to know it can merge into the zero points. Not registered itself."""

    bits: int = 4
    group_size: int = 64
    group_zero_points = True  # class attribute: intk's format, which QA-LoRA merges into

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in BITS:
            raise ValueError(f"{self.name}.bits={self.bits!r} is not accepted; use one of {BITS}")
        check_block_size(self.name, "group_size", self.group_size)
        if self.backend is Backend.bitsandbytes:
            raise ValueError(f"{self.name}.backend=bitsandbytes is not possible: bitsandbytes has no int-k kernel; "
                             "use reference")

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        return packing.packed_nbytes(n, self.bits) + (n // self.group_size) * 2 * 2  # fp16 scale + zero point


@QUANTIZERS.register("intk", "int-k (k = 2/3/4/8) asymmetric min-max with zero point, group-wise (QA-LoRA's base)")
@dataclass
class IntKConfig(IntKFormat):
    name: str = "intk"
    group_size: int = 32  # QA-LoRA's default; GPTQ commonly uses 128

    def build(self) -> IntKQuantizer:
        return IntKQuantizer(self)


class IntKQuantizer(Quantizer):
    config: IntKConfig

    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        check_finite(w, name)
        k, g = self.config.bits, self.config.group_size
        if w.dim() != 2 or w.shape[1] % g:
            raise ValueError(
                f"intk needs a 2-D weight whose input dimension is a multiple of group_size={g}; "
                f"{name} has shape {tuple(w.shape)}. Choose a group_size that divides {w.shape[-1]}."
            )
        groups = w.float().reshape(-1, g)
        lo = groups.amin(dim=1).clamp(max=0)
        hi = groups.amax(dim=1).clamp(min=0)
        qmax = 2**k - 1
        scale = ((hi - lo) / qmax).masked_fill(hi == lo, 1.0)  # an all-zero group: any scale is exact
        scale = round_up_fp16(scale)  # stored in fp16; rounding up keeps [lo, hi] inside the grid
        if torch.isinf(scale).any():
            raise ValueError(
                f"cannot quantize {name} with intk: a group spans {(hi - lo).max().item():.4g}, more than "
                f"an fp16 scale can hold ({torch.finfo(torch.float16).max} * {qmax}); rescale the weight"
            )
        zero_point = torch.round(-lo / scale.float()).clamp(0, qmax)
        q = torch.clamp(torch.round(groups / scale.float().unsqueeze(1)) + zero_point.unsqueeze(1), 0, qmax)
        return QuantizedTensor(
            qdata=packing.pack(q.reshape(-1).to(torch.uint8), k),
            scale=scale,
            zero_point=zero_point.to(torch.float16),  # integers <= 255 are exact in fp16
            granularity=PerGroup(g),
            bits=k,
            shape=w.shape,
            dtype=w.dtype,
            format=f"int{k}_asym",
        )


def round_up_fp16(x: torch.Tensor) -> torch.Tensor:
    """x: fp32 -> the smallest fp16 >= x, elementwise (round-to-nearest is at most one fp16 step low)."""
    half = x.to(torch.float16)
    low = half.float() < x
    # step in fp16 itself: a relative bump cannot reach the next value among fp16's subnormals (< 6.1e-5)
    half[low] = torch.nextafter(half[low], torch.full_like(half[low], float("inf")))
    return half
