"""awq: AWQ (Lin et al. 2023, "Activation-aware Weight Quantization for LLM Compression and Acceleration").

A few input channels carry much larger activations than the rest; AWQ scales those weight columns up before rounding
(and the op feeding them down by the same factor, so the model computes the same function), which rounds the
salient weights on a relatively finer grid. The scale per channel is s = mean|x|^alpha with alpha searched on
calibration inputs (quantizers.awq.solver), folded into the preceding norm or linear (quantizers.awq.fold); an
optional clip search then shrinks each group's range. The codes are intk's round-to-nearest of the scaled,
clipped weight: intk's storage format, so every path that reads intk reads AWQ unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import QUANTIZERS
from quantizers.awq.calibrate import calibrate
from quantizers.base import QuantizedTensor, Quantizer
from quantizers.calibration import CalibratedFormat
from quantizers.intk import IntKConfig


@QUANTIZERS.register("awq", "AWQ (calibrated, activation-aware scales folded into the model) int-k; intk's format")
@dataclass
class AWQConfig(CalibratedFormat):
    name: str = "awq"
    group_size: int = 64  # SmolLM2's 576-wide layers are not divisible by AWQ's usual 128
    grid: int = 20  # alpha in {0, 1/grid, ..., (grid - 1)/grid}: AWQ's published grid
    clip: bool = True  # AWQ's weight-clipping search after the scales
    max_rows: int = 4096  # calibration rows (tokens) per scale group that the searches compare outputs on

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("grid", "max_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"awq.{name}={value!r} is not accepted; use a positive integer")

    def build(self) -> AWQQuantizer:
        return AWQQuantizer(self)

    def calibrate(self, model, names, batches, progress=None) -> dict:
        return calibrate(self, model, names, batches, progress)


class AWQQuantizer(Quantizer):
    """Without calibration inputs (a QLoRA-style merge re-quantizing a merged weight) AWQ is intk's
    round-to-nearest on the same grid: the scales already live in the model."""

    config: AWQConfig

    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        return IntKConfig(bits=self.config.bits, group_size=self.config.group_size).build().quantize(w, name)
