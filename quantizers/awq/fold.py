"""AWQ's scales folded into a llama-style decoder layer, so the model computes the same function before quantization:
the op feeding a group of linears divides its output by s (a norm's weight and bias, or the rows of a linear: v_proj
before o_proj, up_proj before down_proj) and the linears' columns are multiplied by s. `layer_groups` lists those
(op, linears) pairs; `fold_scale` rescales one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# transformers copies the llama norm under each model's name; these compute weight * normalised(x), so dividing
# the weight divides the output. A norm is matched by name only from this list: Gemma's multiplies by
# (1 + weight), which dividing the weight would get wrong.
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def fold_scale(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """In place: prev's output /= s, each linear's weight columns *= s, so the model computes the same function.

    prev: a norm (nn.LayerNorm, nn.RMSNorm, or one of RMS_NORMS: weight and bias /= s) or a plain nn.Linear (rows of
    weight and bias /= s). linears: plain nn.Linear reading prev's output. s: (features,) positive. The products are
    formed in the wider of s's and the parameter's dtype, then stored in the parameter's.
    """
    if s.dim() != 1 or not torch.isfinite(s).all() or not (s > 0).all():
        raise ValueError(f"fold_scale needs s of shape (features,), finite and > 0; got shape {tuple(s.shape)}"
                         + (f", min {s.min().item():.3g}" if s.numel() else ""))
    features = _prev_features(prev)
    if features != s.numel():
        raise ValueError(f"fold_scale: {type(prev).__name__} outputs {features} features but s has {s.numel()}")
    linears = list(linears)
    for i, lin in enumerate(linears):
        if type(lin) is not nn.Linear:
            raise ValueError(f"fold_scale: linears[{i}] is a {type(lin).__name__}; only plain nn.Linear is accepted "
                             "(a quantized linear stores its weight in another form)")
        if lin.in_features != s.numel():
            raise ValueError(f"fold_scale: linears[{i}] reads {lin.in_features} features but s has {s.numel()}")
    s = s.detach()
    with torch.no_grad():
        if isinstance(prev, nn.Linear):
            prev.weight.div_(s.to(prev.weight.device).unsqueeze(1))
        else:
            prev.weight.div_(s.to(prev.weight.device))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s.to(prev.bias.device))
        for lin in linears:
            lin.weight.mul_(s.to(lin.weight.device))


def _prev_features(prev: nn.Module) -> int:
    """How many features prev outputs; raises for a module fold_scale cannot rescale."""
    if type(prev) is nn.Linear:
        return prev.out_features
    if isinstance(prev, (nn.LayerNorm, nn.RMSNorm)) or type(prev).__name__ in RMS_NORMS:
        weight = getattr(prev, "weight", None)
        if weight is None or weight.dim() != 1:
            raise ValueError(f"fold_scale: {type(prev).__name__} has no 1-D weight to divide (elementwise_affine="
                             "False?); AWQ can only fold into a norm with a per-feature weight")
        return weight.numel()
    raise ValueError(f"fold_scale cannot divide the output of a {type(prev).__name__}; accepted: a plain nn.Linear, "
                     f"nn.LayerNorm, nn.RMSNorm or {', '.join(RMS_NORMS)} (a norm computing weight * normalised(x))")


@dataclass
class ScaleGroup:
    """Linears that read one op's output, with one AWQ scale for all. names / prev_name: paths inside the decoder
    layer. inspect: AWQ's module2inspect, the submodule whose output the search compares ("self_attn", "mlp"), or
    None: the linears' own outputs."""

    prev: nn.Module
    linears: list[nn.Linear]
    names: list[str]
    prev_name: str
    inspect: str | None = None


LLAMA_MODULES = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def layer_groups(layer: nn.Module) -> list[ScaleGroup]:
    """AWQ's scale groups of a llama-style decoder layer (transformers' LlamaDecoderLayer and its copies):
      input_layernorm -> self_attn.q/k/v_proj (inspect self_attn);
      self_attn.v_proj -> self_attn.o_proj, only where v's out_features == o's in_features (with grouped-query
          attention each v channel feeds several heads of o, so no per-channel scale folds through);
      post_attention_layernorm -> mlp.gate_proj, mlp.up_proj (inspect mlp);
      mlp.up_proj -> mlp.down_proj (up's output reaches down_proj through an elementwise product).
    A group whose linears (or whose linear prev) are not plain nn.Linear is skipped: already quantized.
    """
    found = {}
    for name in LLAMA_MODULES:
        try:
            found[name] = layer.get_submodule(name)
        except AttributeError:
            found[name] = None
    missing = [name for name, module in found.items() if module is None]
    if missing:
        raise ValueError(f"layer_groups expects a llama-style decoder layer with submodules {list(LLAMA_MODULES)}; "
                         f"{type(layer).__name__} lacks {missing}")
    for norm in ("input_layernorm", "post_attention_layernorm"):
        _prev_features(found[norm])  # a norm AWQ cannot fold into fails here, before any search is spent on it

    candidates = [
        ("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attn"),
        ("self_attn.v_proj", ["self_attn.o_proj"], None),
        ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"], "mlp"),
        ("mlp.up_proj", ["mlp.down_proj"], None),
    ]
    groups = []
    for prev_name, names, inspect in candidates:
        prev, linears = found[prev_name], [found[n] for n in names]
        if any(type(m) is not nn.Linear for m in linears) or (isinstance(prev, nn.Linear) and type(prev) is not nn.Linear):
            continue
        if isinstance(prev, nn.Linear) and prev.out_features != linears[0].in_features:
            continue  # v_proj -> o_proj under grouped-query attention
        groups.append(ScaleGroup(prev=prev, linears=linears, names=names, prev_name=prev_name, inspect=inspect))
    return groups
