"""The QA-LoRA layer: LoRA whose input is pooled per quantization group, so its update folds into zero points.

Pooling convention (the three published ones differ by a constant factor; this is PEFT's, so an adapter saved
here means the same thing to PEFT's GPTQ QA-LoRA):
    pooled = mean over each group of G input features * (in_features / G)        (in_features / G values)
    y = base(x) + (alpha / r) B A pooled(dropout(x))        A: (r, in_features / G), B: (out_features, r)
As a weight, the update is constant within each group of G inputs:
    delta W[o, i] = (alpha / r) (B A)[o, i // G] * (in_features / G) / G
and an intk weight is  W[o, i] = (q[o, i] - z[o, i // G]) s[o, i // G], so merging only moves zero points:
    z'[o, g] = z[o, g] - delta[o, g] / s[o, g]          (codes q untouched; z' kept in fp32, it is fractional)
"""

from __future__ import annotations

import math

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn


def check_group(in_features: int, group: int) -> None:
    if in_features % group:
        raise ValueError(f"QA-LoRA: in_features={in_features} is not a multiple of the group size {group}")


def pool_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """x: (..., in_features) -> (..., in_features / G): the mean of each group of G features x in_features / G."""
    groups = x.shape[-1] // group
    return x.unflatten(-1, (groups, group)).mean(-1) * groups


class QALoraLinear(PeftLoraLinear):
    """PEFT's LoRA Linear with A sized in_features / G and a pooled input; PEFT does the rest (dropout,
    scaling, adapter bookkeeping, saving)."""

    def resolve_lora_variant(self, *, config, **kwargs):
        return None  # PEFT's QA-LoRA variant is GPTQ-only; the pooling lives in this class

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs) -> None:
        group = config.qalora_group_size
        check_group(self.in_features, group)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        old = self.lora_A[adapter_name]
        pooled = nn.Linear(self.in_features // group, r, bias=False, device=old.weight.device,
                           dtype=old.weight.dtype)
        nn.init.kaiming_uniform_(pooled.weight, a=math.sqrt(5))  # PEFT's default init for A (B stays zero)
        self.lora_A[adapter_name] = pooled
        self.__dict__.setdefault("qalora_group_size", {})[adapter_name] = group

    def pool(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """x: (..., in_features) -> (..., in_features / G)."""
        return pool_groups(x, self.qalora_group_size[adapter_name])

    def group_delta(self, adapter_name: str) -> torch.Tensor:
        """(out_features, in_features / G) fp32: the update of every weight in group g of row o."""
        group = self.qalora_group_size[adapter_name]
        a, b = self.lora_A[adapter_name].weight.float(), self.lora_B[adapter_name].weight.float()
        return self.scaling[adapter_name] * (b @ a) * (self.in_features // group) / group

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        group = self.qalora_group_size[adapter_name]
        return self.group_delta(adapter_name).repeat_interleave(group, dim=1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            a, b = self.lora_A[adapter], self.lora_B[adapter]
            h = self.pool(self.lora_dropout[adapter](self._cast_input_dtype(x, a.weight.dtype)), adapter)
            result = result + (b(a(h)) * self.scaling[adapter]).to(result.dtype)
        return result


@torch.no_grad()  # the stored zero points must not carry the adapter's autograd graph
def fold_into_zero_points(layer: QALoraLinear, adapter_name: str) -> None:
    """Merge the adapter into the intk base weight by moving its zero points (codes and scales unchanged)."""
    weight = layer.get_base_layer().weight
    qt = weight.quantized
    scale = qt.scale_values().view(-1)
    delta = layer.group_delta(adapter_name).reshape(-1).to(scale.device)
    zero = qt.zero_point.float().view(-1) - delta / scale
    weight.replace_quantized(qt.replace(zero_point=zero))  # fp32: a fractional zero point stays exact
