"""LoRA (Hu et al. 2021): delta W = (alpha / r) B A, B zero-initialised. Through PEFT on every base layer kind
(QuantLinear, bitsandbytes 4- and 8-bit, dense), with a LoftQ initialisation on top (init=loftq)."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import AdapterConfig, IncompatibleError, resolve_targets
from harness.registry import ADAPTERS


@ADAPTERS.register("lora", "LoRA: delta W = (alpha/r) B A (PEFT), init default | gaussian | loftq, rsLoRA option")
@dataclass
class LoraConfig(AdapterConfig):
    name: str = "lora"
    loftq_iters: int = 1  # init=loftq: alternating quantize / rank-r SVD steps (LoftQ's T)

    inits = ("default", "gaussian", "loftq")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.loftq_iters, int) or self.loftq_iters < 1:
            raise ValueError(f"lora.loftq_iters={self.loftq_iters!r} is not accepted; use an integer >= 1")

    def check_base(self, quantizer_config, layer_kind: str) -> dict:
        base = super().check_base(quantizer_config, layer_kind)
        if self.init == "loftq" and quantizer_config is None:
            raise IncompatibleError(
                "lora.init=loftq initialises from the quantization residual, so it needs a quantizer; "
                "with no quantization (quantizer=none) use init=default"
            )
        return base

    def peft_config(self, model, total_steps: int, base: dict):
        import peft

        return peft.LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, use_rslora=self.rslora,
            target_modules=resolve_targets(self.targets),
            # loftq overwrites A and B after attaching; gaussian is PEFT's Gaussian A (B still zero)
            init_lora_weights="gaussian" if self.init == "gaussian" else True,
        )

    def after_attach(self, model, base_weights) -> None:
        if self.init == "loftq":
            from adapters.lora.loftq import loftq_init

            loftq_init(model, base_weights, self.loftq_iters)
