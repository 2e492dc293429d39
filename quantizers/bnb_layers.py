"""bitsandbytes' own layers built from harness quantizers: Linear4bit (nf4/fp4) and Linear8bitLt (int8 row-wise).

The trap this module guards: on CPUs with AVX512-BF16, a Linear4bit that runs forward in eval mode without
grad repacks its weight in place into an inference-only layout (absmax rounded to bf16, double quantization
undone). Backward through the repacked layer yields no input gradient, silently, and storage figures change.
lm-eval calls model.eval(), so one evaluation breaks the training that follows. `guard_bnb_repack` stops it.
"""

from __future__ import annotations

import torch
from torch import nn

from quantizers import bnb
from quantizers.base import COMPUTE_DTYPES, Backend, QuantizerConfig, check_finite


def _bnb_state_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps outside parameters and buffers: a Linear4bit's QuantState (absmax, code,
    offset, nested absmax and code) and a Linear8bitLt's row scales (SCB, on the weight or in `state`)."""
    out = []
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    while state is not None:  # the nested state of double quantization is a QuantState too
        tensors = (state.absmax, state.code, getattr(state, "offset", None))
        out += [t for t in tensors if isinstance(t, torch.Tensor)]
        state = getattr(state, "state2", None)
    for holder in (getattr(module, "weight", None), getattr(module, "state", None)):
        scb = getattr(holder, "SCB", None)
        if isinstance(scb, torch.Tensor):
            out.append(scb)
    return out


def bnb_kind(config: QuantizerConfig) -> str | None:
    """'4bit' or '8bit' where a bitsandbytes layer implements `config` exactly, else None."""
    if config.backend is Backend.reference or not bnb.available():
        return None
    if getattr(config, "bnb_type", None) in ("nf4", "fp4"):
        return "4bit"
    granularity = getattr(getattr(config, "granularity", None), "value", None)
    # Linear8bitLt's threshold splits *activation* outlier columns; the harness' int8 outliers are weight
    # columns, so only the threshold-free int8 row-wise quantizer is the same computation.
    if config.name == "int8" and granularity == "row" and not config.outlier_threshold:
        return "8bit"
    return None


def bnb_params4bit(weight: torch.Tensor, config, name: str = "weight"):
    """(Params4bit, QuantState) holding `weight` quantized by the harness' bitsandbytes path (bitsandbytes' own
    kernels; the harness does the double quantization so dq_block_size is honoured)."""
    from bitsandbytes.nn import Params4bit

    check_finite(weight, name)
    qt = bnb.quantize_4bit(weight.detach(), config)
    state = bnb.quant_state(qt, COMPUTE_DTYPES[config.compute_dtype])
    params = Params4bit(qt.qdata.view(-1, 1), requires_grad=False, quant_state=state,
                        blocksize=config.block_size, compress_statistics=config.double_quant,
                        quant_type=config.bnb_type, bnb_quantized=True)
    return params, state


def bnb_linear4bit(linear: nn.Linear, config, name: str) -> nn.Module:
    """A bitsandbytes Linear4bit holding `linear`'s weight (see bnb_params4bit)."""
    from bitsandbytes.nn import Linear4bit

    compute_dtype = COMPUTE_DTYPES[config.compute_dtype]
    layer = Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       compute_dtype=compute_dtype, compress_statistics=config.double_quant,
                       quant_type=config.bnb_type, device="meta")
    layer.weight, layer.quant_state = bnb_params4bit(linear.weight, config, f"{name}.weight")
    layer.weight.module = layer
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
    layer.support_avx512bf16_for_cpu = False  # see guard_bnb_repack
    layer.harness_quantizer = config  # what merging re-quantizes with (quantizers.layers)
    return layer


def bnb_int8params(weight: torch.Tensor, name: str = "weight"):
    """Int8Params of LLM.int8 row-wise absmax codes (no outlier threshold), quantized with the same kernel and
    input as the harness' int8 quantizer (quantizers.bnb.int8_vectorwise: fp32 on the CPU, fp16 on CUDA, as
    Linear8bitLt's own .to(device) does), so both module kinds hold identical codes."""
    from bitsandbytes.nn import Int8Params

    check_finite(weight, name)
    # the kernel behind quantizers.bnb.int8_rowwise; SCB must be the row absmax, which it returns directly
    codes, row_absmax, _ = bnb.int8_vectorwise(weight)
    return Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=row_absmax)


def bnb_linear8bit(linear: nn.Linear, config, name: str) -> nn.Module:
    """A bitsandbytes Linear8bitLt (LLM.int8 row-wise absmax, no outlier threshold; see bnb_int8params)."""
    from bitsandbytes.nn import Linear8bitLt

    compute_dtype = COMPUTE_DTYPES[config.compute_dtype]
    layer = Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         has_fp16_weights=False, threshold=0.0, device="meta")
    layer.weight = bnb_int8params(linear.weight, f"{name}.weight")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
    layer.harness_quantizer = config  # what merging re-quantizes with (quantizers.layers)
    return layer


def guard_bnb_repack(model: nn.Module) -> int:
    """Stop every bitsandbytes Linear4bit in `model` from repacking its weight on an eval-mode forward.

    Call it before anything that runs the model in eval mode (lm-eval, perplexity) if the model will be
    trained or measured afterwards. Returns the number of layers guarded. Raises if a layer was repacked
    already: its absmax went through bf16, so the original state cannot be recovered exactly.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:  # no bitsandbytes, so no Linear4bit to guard
        return 0
    guarded = 0
    for name, m in model.named_modules():
        if isinstance(m, Linear4bit):
            if getattr(m.weight.quant_state, "packing_format_for_cpu", False):
                raise RuntimeError(
                    f"{name} was already repacked by bitsandbytes' CPU inference path (an eval-mode forward "
                    "ran before guard_bnb_repack): backward through it now gives no input gradient. "
                    "Rebuild the model, call guard_bnb_repack right after quantizing, then evaluate."
                )
            m.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded
