"""LoHa (LyCORIS; FedPara): delta W = (alpha / r) (B1 A1) ⊙ (B2 A2), rank up to r^2 from 2 r (m + n) parameters.

Through PEFT on the harness' QuantLinear (its weight has the logical shape PEFT sizes the factors from) and on
dense layers. Not on bitsandbytes' Linear4bit: PEFT's LoHa reads the packed (n/2, 1) weight as its shape.
`dropout` is LyCORIS' rank dropout (whole ranks dropped during training).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import AdapterConfig, resolve_targets
from harness.registry import ADAPTERS


@ADAPTERS.register("loha", "LoHa: Hadamard product of two low-rank products (PEFT), on every quantizer")
@dataclass
class LoHaConfig(AdapterConfig):
    name: str = "loha"

    layer_kinds = ("harness", "bnb8", "dense")
    has_rslora = False

    def peft_config(self, model, total_steps: int, base: dict):
        import peft

        return peft.LoHaConfig(r=self.rank, alpha=self.alpha, rank_dropout=self.dropout,
                               target_modules=resolve_targets(self.targets))
