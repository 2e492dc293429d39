"""hqq: Half-Quadratic Quantization (Badri & Shaji 2023), calibration-free, in intk's storage format.

HQQ starts from the min-max grid of intk and moves each group's zero point (optionally its scale too) to minimise
the lp error sum |W - W_r|^p (p < 1: robust to outliers) by half-quadratic proximal iterations; no data is needed.
The result is intk's format exactly (codes in [0, 2^k - 1], one fp16 scale and one fp16 zero point per
`group_size` input features of each row, format int{k}_asym), except that the zero point is a real number rather
than an integer, which fp16 holds and every reader of intk's format already takes (dequantize, QuantLinear,
QA-LoRA's fold, which itself writes fractional zero points). The algorithm: quantizers.hqq.solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.base import QuantizedTensor, Quantizer
from quantizers.hqq.solver import hqq_quantize, hqq_solve
from quantizers.intk import IntKFormat


@QUANTIZERS.register("hqq", "HQQ (calibration-free, lp-optimal zero points) int-k, group-wise; intk's format")
@dataclass
class HQQConfig(IntKFormat):
    name: str = "hqq"
    group_size: int = 64  # hqq's default; SmolLM2's 576-wide layers are not divisible by 128
    # hqq's published defaults (hqq/core/optimize.py): lp_norm 0.7, beta 10, kappa 1.01, 20 iterations
    iterations: int = 20  # proximal updates at most; 0 is intk's round-to-nearest
    lp_norm: float = 0.7  # p of the error sum |W - W_r|^p, in (0, 1]
    beta: float = 10.0  # the half-quadratic penalty, in weight units (quantizers.hqq.solver)
    kappa: float = 1.01  # beta *= kappa after each update; 1 is what hqq's default solver actually does
    optimize_scale: bool = False  # also refit each group's scale; hqq optimizes the zero point only

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 0:
            raise ValueError(f"hqq.iterations={self.iterations!r} is not accepted; use an integer >= 0 "
                             "(0: intk's round-to-nearest)")
        for field, accepted, ok in (
            ("lp_norm", "0 < lp_norm <= 1 (e.g. 0.7)", lambda v: 0 < v <= 1),
            ("beta", "a finite number > 0 (e.g. 10.0)", lambda v: 0 < v < math.inf),
            ("kappa", "a finite number >= 1 (e.g. 1.01; 1 keeps beta fixed)", lambda v: 1 <= v < math.inf),
        ):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
                raise ValueError(f"hqq.{field}={value!r} is not accepted; use {accepted}")

    def build(self) -> HQQQuantizer:
        return HQQQuantizer(self)


class HQQQuantizer(Quantizer):
    config: HQQConfig

    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        c = self.config
        return hqq_quantize(w, c.bits, c.group_size, c.iterations, c.lp_norm, c.beta, c.kappa, c.optimize_scale,
                            name=name)


__all__ = ["HQQConfig", "HQQQuantizer", "hqq_quantize", "hqq_solve"]
