"""Quantize a loaded model: replace its target linear layers, keep the rest in the compute dtype, measure it.

Two kinds of replacement layer:
  harness       quantizers.linear.QuantLinear over any registered quantizer (every format, every device)
  bitsandbytes  bitsandbytes.nn.Linear4bit (nf4/fp4) or Linear8bitLt (int8 row-wise): the layers QLoRA and
                transformers use, with bitsandbytes' fused kernels
`module="auto"` takes bitsandbytes where it implements the quantizer's format, the harness otherwise.

Layer names are matched by glob patterns (fnmatch) against the full dotted name or its last part, so
"q_proj", "*.mlp.*" and "lm_head" all work; a pattern starting with "re:" is a regular expression searched
in the full name.

The trap this module guards: on CPUs with AVX512-BF16, a Linear4bit that runs forward in eval mode without
grad repacks its weight in place into an inference-only layout (absmax rounded to bf16, double quantization
undone). Backward through the repacked layer yields no input gradient, silently, and storage figures change.
lm-eval calls model.eval(), so one evaluation breaks the training that follows. `guard_bnb_repack` stops it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from harness.device import resolve_compute_dtype
from quantizers import bnb
from quantizers.base import COMPUTE_DTYPES, Backend, QuantizerConfig, check_finite
from quantizers.linear import QuantizedWeight, QuantLinear

MODULE_KINDS = ("auto", "harness", "bitsandbytes")
DEFAULT_TARGETS = ("*",)
DEFAULT_SKIP = ("lm_head", "embed*")  # embed* also catches pythia's output layer, `embed_out`


@dataclass
class LayerReport:
    name: str
    kind: str  # class of the replacement layer
    params: int  # weights in the layer (out_features * in_features)
    bytes_before: int  # weight (+ bias) as stored before
    bytes_after: int  # codes, constants (+ bias) after
    bits_per_param: float  # of the quantized weight alone: codes + constants, no bias
    # sum of w^2 and of (w - dequantized w)^2 over the layer's weights, in float64: what a pooled SQNR needs
    signal: float = float("nan")
    error: float = float("nan")


@dataclass
class QuantizationReport:
    quantizer: str
    module: str  # "harness" or "bitsandbytes": what "auto" chose
    compute_dtype: str
    bytes_before: int  # every tensor of the model, each counted once
    bytes_after: int
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def replaced(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def quantized_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def bits_per_param(self) -> float:
        """Bits per weight of the quantized layers together (codes + constants, no biases)."""
        bits = sum(layer.bits_per_param * layer.params for layer in self.layers)
        return bits / self.quantized_params if self.layers else float("nan")

    @property
    def weight_sqnr_db(self) -> float:
        """SQNR of the quantized layers' weights pooled over all of them: 10 log10(sum w^2 / sum err^2)."""
        error = sum(layer.error for layer in self.layers)
        return 10 * math.log10(sum(layer.signal for layer in self.layers) / error) if error > 0 else float("nan")

    @property
    def compression(self) -> float:
        return self.bytes_before / self.bytes_after

    def as_dict(self) -> dict:
        return {**asdict(self), "replaced": len(self.layers), "quantized_params": self.quantized_params,
                "bits_per_param": self.bits_per_param, "weight_sqnr_db": self.weight_sqnr_db,
                "compression": self.compression}


# ---------------------------------------------------------------- storage


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


# ---------------------------------------------------------------- which layers


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern)


def target_layers(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS,
                  skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Names of the plain nn.Linear layers that match a target pattern and no skip pattern."""
    targets, skip = tuple(targets), tuple(skip)
    return [
        name for name, m in model.named_modules()
        if type(m) is nn.Linear  # exactly: bitsandbytes' layers subclass nn.Linear and are quantized already
        and any(matches(name, p) for p in targets) and not any(matches(name, p) for p in skip)
    ]


# ---------------------------------------------------------------- building the layers


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


def _resolve_module(module: str, config: QuantizerConfig) -> str:
    if module not in MODULE_KINDS:
        raise ValueError(f"module={module!r} is not accepted; use one of {list(MODULE_KINDS)}")
    kind = bnb_kind(config)
    if module == "bitsandbytes" and kind is None:
        raise ValueError(
            f"module=bitsandbytes cannot run quantizer {config.name!r} as configured ({config}); "
            "bitsandbytes has layers for nf4/fp4 and for int8 row-wise without outlier_threshold, with "
            "backend auto or bitsandbytes. Use module=harness (or auto)."
        )
    if module == "auto":
        return "bitsandbytes" if kind else "harness"
    return module


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
    layer.harness_quantizer = config  # what merging re-quantizes with (adapters.base_layer)
    return layer


def bnb_int8params(weight: torch.Tensor, name: str = "weight"):
    """Int8Params of LLM.int8 row-wise absmax codes (no outlier threshold), quantized from `weight` as it is
    with the same kernel as the harness' int8 quantizer, so both module kinds hold identical codes
    (Linear8bitLt's own .to(device) would round the weight to fp16 first)."""
    from bitsandbytes.functional import int8_vectorwise_quant
    from bitsandbytes.nn import Int8Params

    check_finite(weight, name)
    # the kernel behind quantizers.bnb.int8_rowwise; SCB must be the row absmax, which it returns directly
    codes, row_absmax, _ = int8_vectorwise_quant(weight.detach().float().contiguous().clone())
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
    layer.harness_quantizer = config  # what merging re-quantizes with (adapters.base_layer)
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


# ---------------------------------------------------------------- the whole model


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the float parameters (not buffers: rotary tables stay as the model keeps them). QuantizedWeights
    are already in the compute dtype and hold their storage elsewhere."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype and not isinstance(p, QuantizedWeight):
            p.data = p.data.to(dtype)


def _weight_error(weight: torch.Tensor, layer: nn.Module) -> tuple[float, float]:
    """(sum w^2, sum (w - w_hat)^2) of a layer's weight against its quantized replacement's dequantized weight.
    One dequantization per layer at quantization time: what the sweep's weight-error-vs-perplexity plot reads."""
    from adapters.base_layer import dequantized_weight  # adapters' one view of every quantized layer kind

    w = weight.detach().double()
    return float(w.square().sum()), float((w - dequantized_weight(layer, torch.float64)).square().sum())


@torch.no_grad()
def quantize_model(model: nn.Module, quantizer_config: QuantizerConfig,
                   targets: Iterable[str] = DEFAULT_TARGETS, skip: Iterable[str] = DEFAULT_SKIP,
                   module: str = "auto") -> QuantizationReport:
    """Replace `model`'s target nn.Linear layers in place with quantized ones; cast every other parameter to
    the quantizer's compute dtype (buffers such as rotary tables stay as the model keeps them).

    Weights are quantized from their dtype as loaded, before any cast. Returns the storage report.
    """
    if quantizer_config.compute_dtype == "auto":  # the native dtype of the device the model is on
        device = next(model.parameters()).device
        quantizer_config = dataclasses.replace(quantizer_config,
                                               compute_dtype=resolve_compute_dtype("auto", device))
    compute_dtype = COMPUTE_DTYPES[quantizer_config.compute_dtype]
    if quantizer_config.name == "none":  # the unquantized baseline: only the cast to the compute dtype
        before = model_storage_bytes(model)
        _cast_parameters(model, compute_dtype)
        return QuantizationReport("none", "none", quantizer_config.compute_dtype, before, model_storage_bytes(model))
    kind = _resolve_module(module, quantizer_config)
    names = target_layers(model, targets, skip)
    if not names:
        raise ValueError(f"no nn.Linear layer matches targets={list(targets)} minus skip={list(skip)}")
    report = QuantizationReport(quantizer_config.name, kind, quantizer_config.compute_dtype,
                                bytes_before=model_storage_bytes(model), bytes_after=0)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # the harmless "kernels" note
    quantizer = quantizer_config.build() if kind == "harness" else None
    replacements = []  # built first, swapped in after: a layer that fails leaves the model as it was
    for name in names:
        linear = model.get_submodule(name)
        if kind == "harness":
            new = QuantLinear.from_linear(linear, quantizer, name=name)
            weight_bytes = new.quantized.nbytes
        else:
            build = bnb_linear4bit if bnb_kind(quantizer_config) == "4bit" else bnb_linear8bit
            new = build(linear, quantizer_config, name)
            bias = [new.bias] if new.bias is not None else []
            weight_bytes = tensor_bytes(module_tensors(new)) - tensor_bytes(bias)
        params = linear.in_features * linear.out_features
        before, after = tensor_bytes(module_tensors(linear)), tensor_bytes(module_tensors(new))
        signal, error = _weight_error(linear.weight, new)
        report.layers.append(LayerReport(name, type(new).__name__, params, before, after,
                                         weight_bytes * 8 / params, signal, error))
        replacements.append((name, new))
    for name, new in replacements:
        _set_module(model, name, new)
    _cast_parameters(model, compute_dtype)
    guard_bnb_repack(model)
    if kind == "bitsandbytes":
        # what PEFT reads to pick its bitsandbytes adapter layers (lora.bnb, adalora.bnb); without it PEFT wraps
        # Linear4bit in its plain Linear, whose merge adds the delta to the packed weight
        flag = "is_loaded_in_4bit" if bnb_kind(quantizer_config) == "4bit" else "is_loaded_in_8bit"
        setattr(model, flag, True)
    report.bytes_after = model_storage_bytes(model)
    return report
