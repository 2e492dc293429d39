"""Training memory, predicted from a model config alone (meta device: a 7B or 65B model sizes on a laptop).

Parts, in bytes (the same names as the measured `memory_<part>_bytes` rows of a train run):
  quantized_weights  codes + constants of the quantized linear layers (each quantizer's storage_bytes(shape))
  other_weights      every other parameter (embeddings, norms, lm_head, unquantized linears) in weight_bytes
  adapter_weights    trainable parameters
  gradients          one gradient per trainable parameter
  optimizer          AdamW's two moments (fp32, or 8-bit + block constants), plus an fp32 master copy when
                     the trainable weights are kept in 16-bit ("mixed" precision)
  activations        what autograd saves for backward, traced on the meta device for the batch and sequence
                     length (and gradient checkpointing) asked for: every tensor passed to a saved-tensor hook
                     that is not a parameter, each storage counted once; plus the backward's first transient
                     buffers, two fp32 logit-sized gradients (d loss / d log-probabilities and / d logits),
                     alive together when backward starts and usually the largest temporaries of a small model
Precision `mixed` is the seeds' rule: 16 bytes per trainable parameter (2 weight + 2 gradient + 4 master + 8
moments). Precision `fp32` is what `harness train` does with adapters (PEFT keeps them in fp32): 4 + 4 + 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.models.skeleton import meta_model

# the parts measured from tensors (a train run's memory_<part>_bytes) and predicted alike
TENSOR_PARTS = ("quantized_weights", "other_weights", "adapter_weights", "gradients", "optimizer")
PARTS = (*TENSOR_PARTS, "activations")

OPTIMIZER_BYTES = {  # bytes per trainable parameter for the optimizer's moments
    "adamw": 8.0, "paged_adamw_32bit": 8.0,
    # bitsandbytes' 8-bit states: one byte per moment plus an fp32 absmax per block of 256 (blockwise quantization)
    "adamw_8bit": 2.0 + 2 * 4 / 256, "paged_adamw_8bit": 2.0 + 2 * 4 / 256,
}


@dataclass
class Scenario:
    """One way to fine-tune: the quantizer of the base (None: a 16/32-bit base), the adapter (None: full
    fine-tuning), the dtype of the frozen weights and of the trainable ones."""

    label: str
    quantizer: object | None  # QuantizerConfig with storage_bytes(shape)
    adapter: object | None  # AdapterConfig (adapters.base)
    weight_bytes: int = 2  # frozen, unquantized weights (bf16 = 2)
    precision: str = "mixed"  # mixed: trainable weights 2 B + fp32 master in the optimizer; fp32: 4 B, no master
    optimizer: str = "adamw"


def attach_meta(model: nn.Module, adapter, total_steps: int = 1000, group_size: int | None = None):
    """PEFT's adapter on the meta model (counts and shapes are all the predictor needs). group_size: the intk
    quantizer's, which sizes QA-LoRA."""
    from adapters.base import attach

    if adapter.name != "qalora":
        return attach(model, adapter, total_steps=total_steps)
    # QA-LoRA's layer dispatches on a real QuantLinear, which the meta model has not got: attach LoRA of the same
    # rank and targets, then give every A what QALoraLinear gives it (adapters/qalora/layer.py)
    if group_size is None:
        raise ValueError("QA-LoRA is sized by the intk quantizer's group_size; predict it with quantizer=intk")
    from peft.tuners.lora import LoraLayer

    from harness.config import adapter_config

    lora = attach(model, adapter_config({"name": "lora", "rank": adapter.rank, "alpha": adapter.alpha,
                                         "dropout": adapter.dropout, "targets": adapter.targets}))
    for layer in (m for m in lora.modules() if isinstance(m, LoraLayer)):
        for name, a in layer.lora_A.items():
            layer.lora_A[name] = _GroupPooledA(a, group_size)
    return lora


class _GroupPooledA(nn.Module):
    """QA-LoRA's A: the input pooled over groups of G features (mean x in / G), then (r, in / G)."""

    def __init__(self, a: nn.Linear, group: int) -> None:
        from adapters.qalora.layer import check_group

        super().__init__()
        check_group(a.in_features, group)
        self.group = group
        self.linear = nn.Linear(a.in_features // group, a.out_features, bias=False, device=a.weight.device,
                                dtype=a.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:  # PEFT reads A's weight (its dtype) in the forward
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from adapters.qalora.layer import pool_groups

        return self.linear(pool_groups(x, self.group))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each tensor once (tied embeddings count once), as PEFT counts them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


class _FusedAttentionSaves(torch.autograd.Function):
    """Stands in for a fused (flash / memory-efficient) attention kernel on the meta device: the output shape, and
    exactly what those kernels save for backward (q, k, v, the output and an fp32 log-sum-exp per row). On meta,
    torch's SDPA falls back to the math path, which would count the (heads x seq x seq) attention matrix that
    the fused kernels on CUDA and on the CPU never keep."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)  # (batch, heads, seq, head_dim)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention interface: query (b, h, s, d), key/value (b, h_kv, s, d) -> ((b, s, h, d), None)."""
    return _FusedAttentionSaves.apply(query, key, value).transpose(1, 2), None


def _use_fused_attention_trace(model: nn.Module) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("harness_fused_trace", _fused_attention)
    model.config._attn_implementation = "harness_fused_trace"
    for sub in model.modules():  # some models keep their own copy of the config
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "harness_fused_trace"


def activation_bytes(model: nn.Module, batch_size: int, seq_len: int, checkpointing: bool = False) -> int:
    """Bytes autograd keeps for backward after a forward with the loss. On the meta device, attention is
    counted as a fused kernel keeps it (see _FusedAttentionSaves); a real model is traced as it runs."""
    if next(model.parameters()).device.type == "meta":
        _use_fused_attention_trace(model)
    params = {id(p) for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(t) not in params:
            kept[id(base)] = max(kept.get(id(base), 0), base.numel() * base.element_size())
        return t

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=next(model.parameters()).device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(kept.values())


def predict(model_cfg, scenario: Scenario, batch_size: int = 1, seq_len: int = 512, checkpointing: bool = False,
            activations: bool = True, compute_dtype: torch.dtype = torch.bfloat16,
            vocab_size: int | None = None) -> dict[str, float]:
    """Predicted bytes of every part for one scenario, plus trainable/total parameter counts."""
    from harness.models.quantize import target_layers

    model = meta_model(model_cfg, compute_dtype, vocab_size)
    quantized = set(target_layers(model)) if scenario.quantizer is not None else set()
    q_bytes = sum(scenario.quantizer.storage_bytes(tuple(model.get_submodule(n).weight.shape)) for n in quantized)
    q_params = {id(model.get_submodule(n).weight) for n in quantized}
    if scenario.adapter is not None:
        model.requires_grad_(False)
        model = attach_meta(model, scenario.adapter, group_size=getattr(scenario.quantizer, "group_size", None))
    else:
        model.requires_grad_(True)
    trainable, total = parameter_counts(model)
    trainable_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    frozen_other = sum(p.numel() for p in model.parameters() if not p.requires_grad and id(p) not in q_params)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary tables and the like
    mixed = scenario.precision == "mixed"
    parts = {
        "quantized_weights": float(q_bytes),
        "other_weights": float(frozen_other * scenario.weight_bytes + buffers),
        "adapter_weights": float(trainable * (2 if mixed else 4)),
        "gradients": float(trainable * (2 if mixed else 4)),
        # + torch AdamW's fp32 step counter, one scalar per trainable tensor
        "optimizer": float(trainable * (OPTIMIZER_BYTES[scenario.optimizer] + (4 if mixed else 0))
                           + 4 * trainable_tensors),
        "activations": float(activation_bytes(model, batch_size, seq_len, checkpointing)
                             + 2 * 4 * batch_size * seq_len * model.config.get_text_config().vocab_size)
        if activations else 0.0,
    }
    return {**parts, "total": sum(parts.values()), "trainable_params": trainable, "total_params": total}
