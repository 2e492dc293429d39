"""LoKr (LyCORIS): delta W = (alpha / r) C ⊗ (B A), C a small full matrix from factorising the dimensions.

Through PEFT on the harness' QuantLinear and on dense layers. Not on bitsandbytes' Linear4bit: PEFT's LoKr
reads the packed (n/2, 1) weight as its shape. `dropout` is LyCORIS' rank dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import AdapterConfig, resolve_targets
from harness.registry import ADAPTERS


@ADAPTERS.register("lokr", "LoKr: Kronecker product of a small matrix and a low-rank product (PEFT)")
@dataclass
class LoKrConfig(AdapterConfig):
    name: str = "lokr"
    decompose_factor: int = -1  # -1: the factorisation closest to square (LyCORIS' default)

    layer_kinds = ("harness", "bnb8", "dense")
    has_rslora = False

    def peft_config(self, model, total_steps: int, base: dict):
        import peft

        return peft.LoKrConfig(r=self.rank, alpha=self.alpha, rank_dropout=self.dropout,
                               decompose_factor=self.decompose_factor,
                               target_modules=resolve_targets(self.targets))
