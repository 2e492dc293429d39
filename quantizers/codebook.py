"""Blockwise absmax quantization onto a 16-level code: the machinery nf4, fp4, fp4_e3m0 and int4 share.

Each block of `block_size` consecutive weights (row-major, as bitsandbytes lays them out) is divided by
its absolute maximum, every value is replaced by the index of the nearest code level, and two 4-bit
indices are packed per byte. A format is nothing but its 16-entry code table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from quantizers import bnb, packing
from quantizers.base import (
    Backend,
    PerBlock,
    QuantizedTensor,
    Quantizer,
    QuantizerConfig,
    blockwise_absmax,
    check_block_size,
    check_finite,
    code_levels,
    nearest_code,
)
from quantizers.double_quant import quantize_scales


@dataclass
class CodebookConfig(QuantizerConfig):
    block_size: int = 64
    double_quant: bool = False  # quantize the block absmax constants too (QLoRA's DQ)
    dq_block_size: int = 256

    # bitsandbytes' name for this format, where its kernels implement it (None: reference only)
    bnb_type: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_block_size(self.name, "block_size", self.block_size)
        check_block_size(self.name, "dq_block_size", self.dq_block_size)
        if self.backend is Backend.bitsandbytes and self.bnb_type is None:
            raise ValueError(
                f"{self.name}.backend=bitsandbytes is not possible: bitsandbytes has no {self.name} kernel; "
                "use backend=reference or backend=auto"
            )

    def code(self) -> torch.Tensor:
        """(16,) float32 code table; index = stored 4-bit code."""
        raise NotImplementedError

    def build(self) -> CodebookQuantizer:
        return CodebookQuantizer(self)

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        blocks = -(-n // self.block_size)
        codes = packing.packed_nbytes(n, 4) + 16 * 4  # 4-bit codes + the fp32 code table
        if not self.double_quant:
            return codes + blocks * 4  # one fp32 absmax per block
        # 8-bit code per absmax, fp32 absmax per second-level block, the 256-entry fp32 dynamic map, the offset
        return codes + blocks + -(-blocks // self.dq_block_size) * 4 + 256 * 4 + 4


class CodebookQuantizer(Quantizer):
    config: CodebookConfig

    def __init__(self, config: CodebookConfig) -> None:
        super().__init__(config)
        self.code = config.code().float()

    def levels(self) -> torch.Tensor:
        return code_levels(self.code)

    def backend_for(self, w: torch.Tensor) -> Backend:
        wanted = self.config.backend
        supported = self.config.bnb_type is not None and bnb.supports(w.device)
        if wanted is Backend.bitsandbytes and not supported:
            raise RuntimeError(f"{self.name}: bitsandbytes cannot quantize on {w.device} here (is it installed?)")
        if wanted is Backend.auto:
            return Backend.bitsandbytes if supported else Backend.reference
        return wanted

    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        check_finite(w, name)
        if self.backend_for(w) is Backend.bitsandbytes:
            return bnb.quantize_4bit(w, self.config)
        cfg = self.config
        blocks, absmax = blockwise_absmax(w, cfg.block_size)
        # multiply by the reciprocal (not divide) so that ties land exactly where bitsandbytes puts them
        normalised = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-1, 1)
        codes = nearest_code(normalised, self.code.to(w.device)).reshape(-1)[: w.numel()]
        scale = quantize_scales(absmax, cfg.dq_block_size) if cfg.double_quant else absmax
        return QuantizedTensor(
            qdata=packing.pack(codes, 4),
            scale=scale,
            granularity=PerBlock(cfg.block_size),
            bits=4,
            shape=w.shape,
            dtype=w.dtype,
            code=self.code.to(w.device),
            format=cfg.name,
            backend="reference",
        )
