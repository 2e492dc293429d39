"""LoftQ-style initialisation (Li et al. 2023) for LoRA on any quantizer.

Minimises ||W - Q - s B A||_F by alternating, for t = 1..T:
    Q_t = quant(W - s B_{t-1} A_{t-1})          (the layer's own quantizer; B_0 A_0 = 0)
    s B_t A_t = best rank-r approximation of W - dequant(Q_t)   (truncated SVD)
The base layer ends holding Q_T and the adapter starts at B_T A_T, so the model starts closer to the
full-precision one than plain quantization (T = 1 is "quantize, then fit the residual"). s = alpha / r.
"""

from __future__ import annotations

import torch

from adapters.base import tuner_layers
from quantizers import layers


@torch.no_grad()
def loftq_layer(layer, weight: torch.Tensor, adapter: str, iters: int) -> float:
    """Initialise one PEFT LoRA layer from its full-precision `weight` (out, in). Returns the final relative
    Frobenius error ||W - deq(Q) - s B A|| / ||W||."""
    base = layer.get_base_layer()
    lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    rank, scaling = lora_a.shape[0], layer.scaling[adapter]
    w = weight.detach().float().to(lora_a.device)
    low_rank = torch.zeros_like(w)
    for _ in range(iters):
        layers.set_weight(base, w - low_rank)
        residual = w - layers.dequantized_weight(base).to(w.device)
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        root = s[:rank].sqrt() / scaling**0.5  # split sqrt(S) between the factors, undo the scaling
        b, a = u[:, :rank] * root, root.unsqueeze(1) * vh[:rank]
        low_rank = scaling * (b @ a)
    lora_a.copy_(a.to(lora_a.dtype))
    lora_b.copy_(b.to(lora_b.dtype))
    error = w - layers.dequantized_weight(base).to(w.device) - low_rank
    return (error.norm() / w.norm()).item()


def loftq_init(model, base_weights: dict[str, torch.Tensor] | None, iters: int) -> dict[str, float]:
    """Initialise every LoRA layer of a PeftModel. base_weights: {name in the unwrapped model: weight}."""
    if not base_weights:
        raise ValueError("init=loftq needs the full-precision weights of the target layers (base_weights)")
    errors = {}
    for name, layer in tuner_layers(model):
        plain = name.removeprefix("base_model.model.")
        if plain not in base_weights:
            raise KeyError(f"init=loftq: no full-precision weight for {plain}; have {sorted(base_weights)[:4]}...")
        for adapter in layer.active_adapters:
            errors[plain] = loftq_layer(layer, base_weights[plain], adapter, iters)
    return errors
