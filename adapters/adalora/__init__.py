"""AdaLoRA (Zhang et al. 2023): delta W = P Λ Q in SVD form; the rank budget falls from init_r to the target
rank (`rank`) on a cubic schedule between tinit and total_step - tfinal, re-allocated every deltaT steps by
importance |w * grad w| (smoothed with beta1, uncertainty beta2). Through PEFT, including its bitsandbytes
layers; the training loop calls `update_and_allocate` after every optimizer step (on_step), and `report`
records the final rank of every layer.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from adapters.base import AdapterConfig, resolve_targets
from harness.registry import ADAPTERS


@ADAPTERS.register("adalora", "AdaLoRA: SVD-form adapter with an adaptive rank budget (PEFT), schedule wired in")
@dataclass
class AdaLoraConfig(AdapterConfig):
    name: str = "adalora"
    init_r: int = 12  # rank every layer starts with; `rank` is the average it ends with (PEFT's target_r)
    tinit: int = 0  # steps of warm-up before the budget starts falling
    tfinal: int = 0  # steps at the end with the final budget fixed
    deltaT: int = 1  # steps between two re-allocations
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5

    has_rslora = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.init_r, int) or self.init_r < self.rank:
            raise ValueError(f"adalora.init_r={self.init_r!r} must be an integer >= adalora.rank={self.rank} "
                             "(the budget only falls)")
        for field_name in ("tinit", "tfinal"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"adalora.{field_name}={getattr(self, field_name)} must be >= 0")
        if self.deltaT < 1:
            raise ValueError(f"adalora.deltaT={self.deltaT} must be >= 1")
        for field_name in ("beta1", "beta2"):
            if not 0 < getattr(self, field_name) < 1:
                raise ValueError(f"adalora.{field_name}={getattr(self, field_name)} must be in (0, 1)")

    def check_steps(self, total_steps: int) -> None:
        if self.tinit + self.tfinal >= total_steps:
            raise ValueError(
                f"adalora.tinit={self.tinit} + adalora.tfinal={self.tfinal} must be below the number of training "
                f"steps ({total_steps}), or the budget never moves; lower them or train longer"
            )

    def peft_config(self, model, total_steps: int, base: dict):
        import peft

        self.check_steps(total_steps)
        return peft.AdaLoraConfig(
            init_r=self.init_r, target_r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
            tinit=self.tinit, tfinal=self.tfinal, deltaT=self.deltaT, beta1=self.beta1, beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight, total_step=total_steps,
            target_modules=resolve_targets(self.targets),
        )

    def on_step(self, model, step: int) -> None:
        # PEFT's schedule: masks ranks below the current budget (computed from step) using the gradients of
        # the step just taken, so it must run after backward and before zero_grad
        model.base_model.update_and_allocate(step)

    def merge_layer(self, layer, adapter_name: str) -> None:
        # PEFT's bitsandbytes SVD layers have no get_delta_weight; this is SVDLinear's formula, for every kind
        from quantizers import layers

        delta = (layer.lora_B[adapter_name] @ (layer.lora_A[adapter_name] * layer.lora_E[adapter_name])).float()
        delta = delta * layer.scaling[adapter_name] / (layer.ranknum[adapter_name] + 1e-5)
        base = layer.get_base_layer()
        layers.set_weight(base, layers.dequantized_weight(base) + delta)
        if not hasattr(layer, "get_delta_weight") and "forward" not in layer.__dict__:
            # PEFT's bitsandbytes SVD layers do not look at `merged` in forward (PEFT cannot merge them), so they
            # would add the update a second time on top of the merged weight: while merged, run the base alone
            layer.forward = types.MethodType(_base_alone_while_merged, layer)

    def report(self, model) -> dict:
        """{layer: rank} as the budget left it: the non-zero entries of each layer's Λ."""
        from adapters.base import tuner_layers

        ranks = {}
        for name, layer in tuner_layers(model):
            for adapter in layer.active_adapters:
                ranks[name.removeprefix("base_model.model.")] = int((layer.lora_E[adapter] != 0).sum())
        return {"final_ranks": ranks}


def _base_alone_while_merged(layer, x, *args, **kwargs):
    """forward of a PEFT bitsandbytes SVD layer once adapters.base.merge has merged into it (a bound method, so
    deepcopy rebinds it to the copy)."""
    if layer.merged:
        return layer.base_layer(x, *args, **kwargs)
    return type(layer).forward(layer, x, *args, **kwargs)
