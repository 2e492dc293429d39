"""gptq: GPTQ (Frantar et al. 2022, "Accurate Post-Training Quantization for Generative Pre-trained Transformers").

GPTQ quantizes a linear layer's weight column by column and, after each column, moves the rounding error
onto the columns not yet quantized, weighted by the inverse Hessian of the layer's squared output error
on calibration inputs (H = 2 X^T X / n). Its output is intk's storage format exactly (codes in
[0, 2^k - 1], one fp16 scale and one zero point per `group_size` input features of each row), so every
path that reads intk (QuantLinear, the adapters, QA-LoRA's merge into zero points) reads GPTQ unchanged.

The Hessians come from quantizers.calibration's sequential pass: each decoder layer sees the outputs of the
already-quantized layers below it. Without calibration inputs (a QLoRA-style merge re-quantizes a merged weight)
GPTQ with H = I is exactly round-to-nearest on the same grid, which is what `quantize(w)` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.base import QuantizedTensor, Quantizer
from quantizers.calibration import CalibratedFormat
from quantizers.gptq.calibrate import calibrate
from quantizers.gptq.solver import HESSIAN_DTYPES, HessianAccumulator, gptq_quantize


@QUANTIZERS.register("gptq", "GPTQ (calibrated, error-compensating) int-k with zero point, group-wise; intk's format")
@dataclass
class GPTQConfig(CalibratedFormat):
    name: str = "gptq"
    group_size: int = 64  # SmolLM2's 576-wide layers are not divisible by GPTQ's usual 128
    sym: bool = False  # asymmetric min-max (intk's grid); sym: GPTQ's reference grid, zero point 2^(k-1)
    act_order: bool = False  # columns in decreasing diag(H) order; needs static_groups
    static_groups: bool = False  # group parameters from the original weight up front (so act_order stores plainly)
    block_size: int = 128  # the lazy batch: only speed depends on it, the codes do not
    damp: float = 0.01  # of the mean diagonal of H, added to it
    hessian_dtype: str = "float32"  # the reference's; float64 for exactness checks

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_order and not self.static_groups:
            raise ValueError("gptq.act_order=true needs gptq.static_groups=true: without static groups a group's "
                             "columns are scattered by the permutation and intk's format (groups of consecutive "
                             "inputs) cannot store it; set static_groups=true or act_order=false")
        if not 0 <= self.damp < 1:
            raise ValueError(f"gptq.damp={self.damp!r} is not accepted; use a fraction of mean(diag H) in [0, 1)")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"gptq.block_size={self.block_size!r} is not accepted; use a positive integer")
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise ValueError(f"gptq.hessian_dtype={self.hessian_dtype!r} is not accepted; use one of "
                             f"{list(HESSIAN_DTYPES)}")

    def build(self) -> GPTQQuantizer:
        return GPTQQuantizer(self)

    def calibrate(self, model, names, batches, progress=None) -> dict:
        return calibrate(self, model, names, batches, progress)


class GPTQQuantizer(Quantizer):
    config: GPTQConfig

    def quantize_with_hessian(self, w: torch.Tensor, H: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        c = self.config
        return gptq_quantize(w, H, c.bits, c.group_size, c.sym, c.act_order, c.static_groups, c.block_size,
                             c.damp, name=name)

    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        """Without calibration inputs: H = I, where GPTQ's compensation vanishes and it rounds to nearest on its own
        grid (a QLoRA-style merge re-quantizes this way)."""
        eye = torch.eye(w.shape[-1], dtype=torch.float64, device=w.device) if w.dim() == 2 else None
        if eye is None:
            raise ValueError(f"gptq needs a 2-D weight; {name} has shape {tuple(w.shape)}")
        return self.quantize_with_hessian(w, eye, name)


__all__ = ["GPTQConfig", "GPTQQuantizer", "HessianAccumulator"]
