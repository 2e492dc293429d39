"""Bytes a module's tensors take: parameters, buffers and bitsandbytes' quantization state, each storage once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantizers.bnb_layers import _bnb_state_tensors
from quantizers.linear import QuantizedWeight


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor `module` holds (its own, not its children's): parameters, buffers, bitsandbytes state.
    A QuantizedWeight counts as the packed tensors it stores, not as its logical dense shape."""
    own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    out = []
    for t in own:
        if isinstance(t, QuantizedWeight):
            out += list(t.quantized.tensors().values())
        elif t is not None:
            out.append(t)
    return out + _bnb_state_tensors(module)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of `tensors`, each stored tensor counted once (tied or shared tensors share their memory)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if t.numel() == 0:
            continue
        key = (t.device, t.data_ptr()) if t.device.type != "meta" else ("meta", id(t))
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return sum(seen.values())


def model_storage_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in `model` (parameters, buffers, bitsandbytes quant state), each counted once."""
    return tensor_bytes(t for m in model.modules() for t in module_tensors(m))
