"""Quantize a loaded model: replace its target linear layers, keep the rest in the compute dtype, measure it.

Two kinds of replacement layer:
  harness       quantizers.linear.QuantLinear over any registered quantizer (every format, every device)
  bitsandbytes  bitsandbytes.nn.Linear4bit (nf4/fp4) or Linear8bitLt (int8 row-wise): the layers QLoRA and
                transformers use, with bitsandbytes' fused kernels
`module="auto"` takes bitsandbytes where it implements the quantizer's format, the harness otherwise.

Layer names are matched by glob patterns (fnmatch) against the full dotted name or its last part, so
"q_proj", "*.mlp.*" and "lm_head" all work; a pattern starting with "re:" is a regular expression searched
in the full name.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from harness.device import resolve_compute_dtype
from quantizers.base import COMPUTE_DTYPES, QuantizerConfig
from quantizers.bnb_layers import bnb_kind, bnb_linear4bit, bnb_linear8bit, guard_bnb_repack
from quantizers.linear import QuantizedWeight, QuantLinear
from quantizers.storage import model_storage_bytes, module_tensors, tensor_bytes

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
    # calibrated quantizers: ||(W - W_hat) X|| / ||W X|| on the calibration inputs, and round-to-nearest's
    output_error: float = float("nan")
    rtn_output_error: float = float("nan")


@dataclass
class QuantizationReport:
    quantizer: str
    module: str  # "harness" or "bitsandbytes": what "auto" chose
    compute_dtype: str
    bytes_before: int  # every tensor of the model, each counted once
    bytes_after: int
    layers: list[LayerReport] = field(default_factory=list)
    quantize_seconds: float = float("nan")  # the whole quantization, calibration included
    calibration_peak_bytes: int = 0  # peak resident (CPU) or allocated (CUDA) memory while quantizing
    calibration_cached: bool = False  # read from harness.models.calibrated's cache (the two figures above are its)

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


def _calibrate(model, config: QuantizerConfig, names: list[str], calibration, cache, cache_state: dict) -> dict:
    """{layer name: CalibratedLayer} from a calibrated quantizer's pass over `model` (or from `cache`, a
    harness.models.calibrated file, when it holds it); {} for the others."""
    if not getattr(config, "calibrated", False):
        return {}
    if not calibration:
        raise ValueError(f"quantizer {config.name} is calibrated: quantize_model needs calibration batches of token "
                         "ids (harness.data.calibration.calibration_batches draws them from the corpus)")
    from harness.models import calibrated

    if cache is not None and (saved := calibrated.load(cache, model)) is not None:
        cache_state["costs"] = saved["costs"]  # what the calibration cost when it ran, which the report keeps
        return saved["layers"]
    before = calibrated.snapshot(model, names) if cache is not None else None
    result = config.calibrate(model, names, calibration)
    outside = [name for name in names if name not in result]
    if outside:
        raise ValueError(f"quantizer {config.name} calibrates the linear layers inside the decoder layers only; "
                         f"{', '.join(outside[:4])} lie outside them: add them to the quantization's skip list")
    if cache is not None:  # written by quantize_model once the costs are known
        cache_state["save"] = lambda costs: calibrated.save(cache, model, before, result, costs)
    return result


def check_group_size(model: nn.Module, config: QuantizerConfig, names: list[str]) -> None:
    """intk's group-wise format (intk, GPTQ, AWQ, HQQ) needs group_size to divide every target layer's inputs:
    checked for all of them before any layer is quantized or calibrated, naming the first that fails."""
    group = getattr(config, "group_size", None)
    if group is None or not getattr(config, "group_zero_points", False):
        return
    widths = {name: model.get_submodule(name).in_features for name in names}
    bad = [name for name, width in widths.items() if width % group]
    if bad:
        common = math.gcd(*widths.values())
        fits = [g for g in (32, 64, 128, 256, 512, 1024, 2048, 4096) if common % g == 0]
        raise ValueError(
            f"{config.name}.group_size={group} does not divide the inputs of {len(bad)} target layer(s), e.g. "
            f"{bad[0]} (in_features={widths[bad[0]]}); group sizes that divide every target layer: "
            f"{fits or 'none of the powers of two from 32'}; or skip those layers")


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
    from quantizers.layers import dequantized_weight

    w = weight.detach().double()
    return float(w.square().sum()), float((w - dequantized_weight(layer, torch.float64)).square().sum())


@torch.no_grad()
def quantize_model(model: nn.Module, quantizer_config: QuantizerConfig,
                   targets: Iterable[str] = DEFAULT_TARGETS, skip: Iterable[str] = DEFAULT_SKIP,
                   module: str = "auto", calibration: list[torch.Tensor] | None = None,
                   cache=None) -> QuantizationReport:
    """Replace `model`'s target nn.Linear layers in place with quantized ones; cast every other parameter to
    the quantizer's compute dtype (buffers such as rotary tables stay as the model keeps them).

    Weights are quantized from their dtype as loaded, before any cast. A calibrated quantizer (GPTQ, AWQ) needs
    `calibration`: batches of token ids (harness.data.calibration draws them), and reads and writes its result in
    `cache` (a path from harness.models.calibrated.calibrated_base_path) when given. Returns the storage report.
    """
    import contextlib

    from harness.measure import PeakMemory

    calibrated = getattr(quantizer_config, "calibrated", False)
    # only around a calibration: PeakMemory resets the process' high-water mark, which a caller may be measuring
    peak = PeakMemory(next(model.parameters()).device) if calibrated else contextlib.nullcontext()
    start = time.perf_counter()
    cache_state: dict = {}
    with peak:
        report = _quantize_model(model, quantizer_config, targets, skip, module, calibration, cache, cache_state)
    report.quantize_seconds = time.perf_counter() - start
    if calibrated:
        report.calibration_peak_bytes = int(peak.bytes)
    if "costs" in cache_state:  # read from the cache: the figures of the run that calibrated
        report.quantize_seconds, report.calibration_peak_bytes = cache_state["costs"]
        report.calibration_cached = True
    if "save" in cache_state:
        cache_state["save"]((report.quantize_seconds, report.calibration_peak_bytes))
    return report


def _quantize_model(model, quantizer_config, targets, skip, module, calibration, cache,
                    cache_state) -> QuantizationReport:
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
    check_group_size(model, quantizer_config, names)
    quantizer = quantizer_config.build() if kind == "harness" else None
    calibrated = _calibrate(model, quantizer_config, names, calibration, cache, cache_state)
    replacements = []  # built first, swapped in after: a layer that fails leaves the model as it was
    for name in names:
        linear = model.get_submodule(name)
        if name in calibrated:
            new = QuantLinear.from_quantized(linear, calibrated[name].quantized, quantizer)
            weight_bytes = new.quantized.nbytes
        elif kind == "harness":
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
        if name in calibrated:
            report.layers[-1].output_error = calibrated[name].output_error
            report.layers[-1].rtn_output_error = calibrated[name].rtn_output_error
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
