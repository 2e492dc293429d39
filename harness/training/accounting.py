"""Training memory measured from the tensors themselves: quantized weights, other weights, adapter, and the
peak, so that the parts add up to it.
"""

from __future__ import annotations

import torch

from adapters import base as adapters
from harness.measure import PeakMemory
from quantizers.storage import tensor_bytes


def quantized_share(model) -> float:
    """Share of the adapted layers whose base still holds quantized storage (after a merge: did it stay
    quantized, or did it fall back to a dense weight?)."""
    from quantizers.layers import layer_kind

    layers = adapters.tuner_layers(model)
    return sum(layer_kind(m.get_base_layer()) != "dense" for _, m in layers) / max(1, len(layers))


def weight_bytes(model) -> dict[str, int]:
    """Bytes of the quantized weights (codes + constants), the other frozen weights, and the adapter, measured
    from the tensors themselves (each stored tensor once)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from quantizers.layers import layer_kind, stored_tensors
    from quantizers.storage import module_tensors

    quantized, frozen, trainable = [], [], []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):  # holds nothing itself; its `weight` property is the base layer's
            continue
        is_linear = isinstance(module, torch.nn.Linear)
        if is_linear and layer_kind(module) != "dense":
            quantized += list(stored_tensors(module).values())
            frozen += [module.bias] if module.bias is not None else []
            continue
        for t in module_tensors(module):
            (trainable if t.requires_grad else frozen).append(t)
    return {"quantized_weights": tensor_bytes(quantized), "other_weights": tensor_bytes(frozen),
            "adapter_weights": tensor_bytes(trainable)}


def training_peak(peak: PeakMemory, start: int, memory: dict[str, int], device: torch.device) -> int:
    """Peak bytes of training. CUDA: the allocator's peak during the loop (weights included, as they live on the
    GPU). CPU: the weights measured from their tensors plus the resident set's growth during the loop; the
    process's whole resident set would also count the Python runtime, libraries, tokenizer and corpus."""
    if device.type == "cuda":
        return peak.bytes
    static = memory["quantized_weights"] + memory["other_weights"] + memory["adapter_weights"]
    return static + peak.bytes - start


def memory_rows(parts: dict[str, int], peak: int) -> dict[str, int]:
    """memory_<part>_bytes rows; `rest` (activations, workspace, allocator slack) is the peak minus the others."""
    rows = {f"memory_{name}_bytes": value for name, value in parts.items()}
    rows["memory_rest_bytes"] = peak - sum(parts.values())
    return rows


def step_memory(rows: list[dict], start: int, memory: dict[str, int], device: torch.device) -> dict[str, float]:
    """Memory over the optimizer steps as PEFT's method comparison reports it: mean, max and 99th percentile of
    the per-step samples, in use (CUDA allocated) and reserved (CUDA's caching allocator). On the CPU both are the
    weights plus the resident set's growth since training began, as training_peak counts the CPU peak; the rows
    of loss.csv are rewritten to that measure. The samples are taken after each step, so their max can sit below
    peak_memory_bytes, which also sees the activations inside a step."""
    import numpy as np

    if device.type != "cuda":
        static = memory["quantized_weights"] + memory["other_weights"] + memory["adapter_weights"]
        for row in rows:
            row["memory_bytes"] = row["memory_reserved_bytes"] = static + row["memory_bytes"] - start
    out = {}
    for column, name in (("memory_bytes", "memory"), ("memory_reserved_bytes", "memory_reserved")):
        values = np.array([row[column] for row in rows], dtype=float)
        out |= {f"{name}_avg_bytes": float(values.mean()), f"{name}_max_bytes": float(values.max()),
                f"{name}_99th_bytes": float(np.percentile(values, 99))}
    return out
