"""int8 absmax: row-wise (LLM.int8's vector-wise) or blockwise, with LLM.int8's optional outlier columns.

q = round(127 * x / absmax). With outlier_threshold > 0 (LLM.int8 uses 6.0), every column holding a value
with |x| >= threshold is kept in float16 beside the int8 codes; as in bitsandbytes, those values are left
out of their row's absmax and their columns' codes are zero.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers import bnb
from quantizers.base import (
    Backend,
    PerBlock,
    PerRow,
    QuantizedTensor,
    Quantizer,
    QuantizerConfig,
    _enum_field,
    blockwise_absmax,
    check_block_size,
    check_finite,
)


class Int8Granularity(enum.Enum):
    row = "row"
    block = "block"


@QUANTIZERS.register("int8", "int8 absmax, row-wise (LLM.int8) or blockwise, optional fp16 outlier columns")
@dataclass
class Int8Config(QuantizerConfig):
    name: str = "int8"
    granularity: Int8Granularity = Int8Granularity.row
    block_size: int = 64  # used when granularity=block
    outlier_threshold: float = 0.0  # 0 disables; LLM.int8 uses 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.granularity, str):
            self.granularity = _enum_field(Int8Granularity, "int8.granularity", self.granularity)
        check_block_size(self.name, "block_size", self.block_size)
        if not self.outlier_threshold >= 0:  # written so that NaN fails too
            raise ValueError(f"int8.outlier_threshold={self.outlier_threshold} must be >= 0 (0 turns it off)")
        if self.outlier_threshold and self.granularity is not Int8Granularity.row:
            raise ValueError(
                f"int8.outlier_threshold={self.outlier_threshold} needs granularity=row (outliers are whole "
                f"columns), not granularity={self.granularity.value}; "
                "set outlier_threshold=0 or granularity=row"
            )
        if self.backend is Backend.bitsandbytes and self.granularity is not Int8Granularity.row:
            raise ValueError(
                "int8.backend=bitsandbytes supports granularity=row only, "
                f"not granularity={self.granularity.value}; use backend=reference or auto"
            )

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        scales = shape[0] if self.granularity is Int8Granularity.row else -(-n // self.block_size)
        return n + scales * 4  # outlier columns (outlier_threshold > 0) depend on the data: not included

    def build(self) -> Int8Quantizer:
        return Int8Quantizer(self)


class Int8Quantizer(Quantizer):
    config: Int8Config

    def levels(self) -> torch.Tensor:
        return torch.arange(-127, 128, dtype=torch.float32) / 127

    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        check_finite(w, name)
        cfg = self.config
        if cfg.granularity is Int8Granularity.block:
            blocks, absmax = blockwise_absmax(w, cfg.block_size)
            q = torch.round(blocks * (127.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).to(torch.int8)
            return QuantizedTensor(
                qdata=q.reshape(-1)[: w.numel()].contiguous(), scale=absmax / 127.0,
                granularity=PerBlock(cfg.block_size), bits=8, shape=w.shape, dtype=w.dtype, format="int8",
            )
        if w.dim() != 2:
            raise ValueError(f"int8 granularity=row needs a 2-D weight; {name} has shape {tuple(w.shape)}")
        use_bnb = cfg.backend is Backend.bitsandbytes or (cfg.backend is Backend.auto and bnb.supports(w.device))
        if use_bnb:
            return bnb.int8_rowwise(w, cfg.outlier_threshold, name)
        x = w.float()
        outliers = x.abs() >= cfg.outlier_threshold if cfg.outlier_threshold else torch.zeros_like(x, dtype=torch.bool)
        cols = outliers.any(dim=0).nonzero().reshape(-1)
        absmax = x.masked_fill(outliers, 0).abs().amax(dim=1)
        q = torch.round(x * (127.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-127, 127).to(torch.int8)
        q[:, cols] = 0
        keep = cfg.outlier_threshold > 0
        return QuantizedTensor(
            qdata=q, scale=absmax / 127.0, granularity=PerRow(), bits=8, shape=w.shape, dtype=w.dtype,
            outlier_cols=cols.to(torch.int32) if keep else None,
            outlier_values=w[:, cols].to(torch.float16) if keep else None,
            format="int8",
        )
