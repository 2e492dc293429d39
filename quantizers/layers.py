"""The one view adapters have of the layer they sit on: its kind, its dense weight, and a way to replace it.

Four kinds of base layer exist in a harness model:
  harness  quantizers.linear.QuantLinear (any quantizer; the weight is a QuantizedWeight)
  bnb4     bitsandbytes Linear4bit (nf4/fp4)
  bnb8     bitsandbytes Linear8bitLt (int8 row-wise)
  dense    a plain nn.Linear (16-bit or fp32 base)
Merging is `set_weight(layer, dequantized_weight(layer) + delta)`: the new weight is re-quantized with the
layer's own quantizer. `snapshot` / `restore` keep the exact pre-merge storage, so unmerge gives back the
original codes bit for bit instead of re-quantizing twice (re-quantizing W + d - d rarely lands on W's codes).
"""

from __future__ import annotations

import torch
from torch import nn

from quantizers import bnb
from quantizers.linear import QuantLinear

KINDS = ("harness", "bnb4", "bnb8", "dense")


def _bnb_classes() -> tuple[type, type] | tuple[()]:
    try:
        from bitsandbytes.nn import Linear4bit, Linear8bitLt
    except Exception:  # no bitsandbytes: no such layers can exist
        return ()
    return Linear4bit, Linear8bitLt


def layer_kind(layer: nn.Module) -> str:
    classes = _bnb_classes()
    if isinstance(layer, QuantLinear):
        return "harness"
    if classes and isinstance(layer, classes[0]):
        return "bnb4"
    if classes and isinstance(layer, classes[1]):
        return "bnb8"
    if isinstance(layer, nn.Linear):
        return "dense"
    raise TypeError(f"{type(layer).__name__} is not a linear layer the harness knows; kinds: {list(KINDS)}")


def _int8_codes_and_scales(layer) -> tuple[torch.Tensor, torch.Tensor]:
    # bitsandbytes moves CB/SCB from the weight to layer.state on the first forward
    scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    return layer.weight.data, scb


def dequantized_weight(layer: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(out_features, in_features) dense weight in `dtype`."""
    kind = layer_kind(layer)
    if kind == "harness":
        return layer.weight.dequantize(dtype)
    if kind == "bnb4":
        return bnb.from_quant_state(layer.weight.data, layer.weight.quant_state).dequantize(dtype)
    if kind == "bnb8":
        codes, scb = _int8_codes_and_scales(layer)
        return (codes.float() * (scb.float() / 127).unsqueeze(1)).to(dtype)
    return layer.weight.detach().to(dtype)


def stored_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor that stores the weight (codes and constants; the dense weight for `dense`), by name."""
    kind = layer_kind(layer)
    if kind == "harness":
        return layer.weight.quantized.tensors()
    if kind == "bnb4":
        return bnb.from_quant_state(layer.weight.data, layer.weight.quant_state).tensors()
    if kind == "bnb8":
        codes, scb = _int8_codes_and_scales(layer)
        return {"qdata": codes, "scale": scb}
    return {"weight": layer.weight.detach()}


def set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store the dense `weight` in `layer`, quantized as the layer's weight is (same quantizer and settings)."""
    kind = layer_kind(layer)
    if kind == "harness":
        layer.weight.requantize_(weight)
    elif kind == "bnb4":
        from quantizers.bnb_layers import bnb_params4bit

        params, state = bnb_params4bit(weight.to(layer.weight.device), layer.harness_quantizer)
        params.module = layer
        layer.weight, layer.quant_state = params, state
    elif kind == "bnb8":
        from quantizers.bnb_layers import bnb_int8params

        layer.weight = bnb_int8params(weight.to(layer.weight.device))
        layer.state.CB = layer.state.SCB = None  # the next forward reads the new codes from the weight
    else:
        with torch.no_grad():
            layer.weight.copy_(weight)


def snapshot(layer: nn.Module):
    """An opaque handle on the layer's current weight storage (no copy: set_weight replaces, never mutates)."""
    kind = layer_kind(layer)
    if kind == "harness":
        return layer.weight.quantized
    if kind == "bnb4":
        return layer.weight, layer.quant_state
    if kind == "bnb8":
        return layer.weight, layer.weight.CB, layer.weight.SCB, layer.state.CB, layer.state.SCB
    return layer.weight.detach().clone()  # dense weights are updated in place, so this one is a copy


def restore(layer: nn.Module, handle) -> None:
    kind = layer_kind(layer)
    if kind == "harness":
        layer.weight.replace_quantized(handle)
    elif kind == "bnb4":
        layer.weight, layer.quant_state = handle
    elif kind == "bnb8":
        layer.weight, cb, scb, layer.state.CB, layer.state.SCB = handle
        layer.weight.CB, layer.weight.SCB = cb, scb
    else:
        with torch.no_grad():
            layer.weight.copy_(handle)

