"""Calibration for the quantizers that look at activations (GPTQ, AWQ): the config of the calibration set, and the
one sequential pass over a model's decoder layers that feeds them.

The pass (GPTQ's and AWQ's reference order): the calibration sequences run through the embeddings once, the inputs
of the first decoder layer are kept, and then, one decoder layer at a time,
  1. the layer runs on every kept input with hooks on its target linears (the quantizer collects what it needs:
     GPTQ a Hessian per distinct input, AWQ the inputs themselves),
  2. the quantizer quantizes the layer's linears (and may rescale them, computing the same function),
  3. the layer runs again with the quantized weights in place, and its outputs become the next layer's inputs,
so each decoder layer is calibrated on what the already-quantized layers below it produce. The whole model never
runs forward again, and only one layer's inputs and outputs are alive at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from quantizers.intk import IntKFormat

SPLITS = ("train", "validation", "test")


@dataclass
class CalibrationConfig:
    """The calibration set: `samples` sequences of `seq_len` tokens drawn (with `seed`) from the corpus' `split`."""

    samples: int = 128
    seq_len: int = 512
    split: str = "train"  # never the split that is evaluated: the run's plan checks that
    seed: int = 0

    def __post_init__(self) -> None:
        for field_name in ("samples", "seq_len"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"calibration.{field_name}={value!r} is not accepted; use a positive integer")
        if self.split not in SPLITS:
            raise ValueError(f"calibration.split={self.split!r} is not accepted; use one of {list(SPLITS)} "
                             "(train by default: never the split the run evaluates)")


@dataclass
class CalibratedFormat(IntKFormat):
    """A quantizer that writes intk's format from calibration inputs (GPTQ, AWQ): its calibration set, and the
    class attribute `calibrated` that tells quantize_model to run its calibrate(model, names, batches) first."""

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    calibrated = True  # class attribute, not a field

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.calibration, dict):
            self.calibration = CalibrationConfig(**self.calibration)

    def calibrate(self, model: nn.Module, names, batches, progress=None) -> dict:
        raise NotImplementedError


@dataclass
class CalibratedLayer:
    """What a calibrated quantizer made of one linear: its quantized weight, and its relative output error on the
    calibration inputs, ||(W - W_hat) X|| / ||W X||, beside round-to-nearest's on the same grid and inputs."""

    quantized: object  # QuantizedTensor
    output_error: float
    rtn_output_error: float


def output_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||(W - W_hat) X^T||_F / ||W X^T||_F from H = 2 X^T X / n alone: ||D X^T||^2 = (n / 2) tr(D H D^T), and the
    factor cancels in the ratio. In float64: the traces are sums of many products of mixed sign."""
    H = H.double()
    w, d = w.double(), w.double() - w_hat.double()
    signal = (w @ H * w).sum()
    return float(((d @ H * d).sum() / signal).clamp(min=0).sqrt()) if signal > 0 else float("nan")


class _Stop(Exception):
    """Raised by the hook on the first decoder layer: the rest of the model need not run to capture its inputs."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList holding the most linear layers (model.layers for
    Llama, gpt_neox.layers for Pythia, transformer.h for GPT-2-style models)."""
    best, most = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module):
            count = sum(isinstance(m, nn.Linear) for m in module.modules())
            if count > most:
                best, most = module, count
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of decoder layers (an nn.ModuleList of blocks holding "
                         "linear layers); calibrated quantizers need a transformer with one")
    return best


@torch.no_grad()
def first_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: Iterable[torch.Tensor]) -> list:
    """[(args, kwargs)] the first decoder layer receives for each batch of token ids (attention mask and position
    embeddings included, as the model builds them)."""
    captured = []

    def grab(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(ids, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden: torch.Tensor):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # older transformers return (hidden, attentions, ...)


# step(index, layer, {name: linear}, run) -> None, or a callable run once the layer's outputs are computed (to put
# back weights the step swapped in only for them)
LayerStep = Callable[[int, nn.Module, dict[str, nn.Linear], Callable[[], None]], Callable[[], None] | None]


@torch.no_grad()
def sequential_pass(model: nn.Module, batches: list[torch.Tensor], targets: Iterable[str], step: LayerStep,
                    progress: Callable[[str], None] | None = None) -> float:
    """Walk the decoder layers bottom-up; for each layer holding target linears, call
    step(index, layer, {full name: linear}, run), where run() runs the layer on every current input (the step
    registers its hooks around it). Then the layer's outputs, with whatever weights the step left in place, become
    the next layer's inputs, and the callable the step returned (if any) runs. Returns the seconds taken.
    `targets` are full module names in `model`; progress(message) is told after each layer (else a tqdm bar)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    targets = set(targets)
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    inputs = first_layer_inputs(model, layers, batches)

    def run() -> None:
        for args, kwargs in inputs:
            try:
                layer(*args, **kwargs)
            except _Stop:  # input_hooks(..., layer=layer): every target linear has read its input
                pass

    bar = tqdm(total=len(layers), desc="calibrating", unit="layer", disable=progress is not None)
    for index, layer in enumerate(layers):
        here = f"{prefix}.{index}."
        linears = {here + name: m for name, m in layer.named_modules() if here + name in targets}
        after = step(index, layer, linears, run) if linears else None
        if index + 1 < len(layers):  # the last layer's outputs feed no one
            inputs = [_with_hidden(args, kwargs, _output(layer(*args, **kwargs))) for args, kwargs in inputs]
        if after is not None:
            after()
        bar.update()
        if progress is not None:
            progress(f"layer {index + 1}/{len(layers)} ({time.perf_counter() - start:.0f} s)")
    bar.close()
    return time.perf_counter() - start


def swap_in(linears: dict[str, nn.Linear], weights: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Put `weights` (the dequantized quantized weights) into the linears, so the layer's outputs for the next layer
    are the quantized model's; returns the callable that puts the original weights back (a LayerStep returns it:
    quantize_model builds the quantized layers from the codes and measures them against the originals)."""
    originals = {name: linear.weight.data for name, linear in linears.items()}
    for name, linear in linears.items():
        linear.weight.data = weights[name].to(linear.weight.dtype)

    def restore() -> None:
        for name, linear in linears.items():
            linear.weight.data = originals[name]

    return restore


def input_hooks(linears: dict[str, nn.Linear], consume: Callable[[str, torch.Tensor], None],
                layer: nn.Module | None = None):
    """Forward pre-hooks that hand each distinct input to consume(owner, x) once: linears called one after the
    other on the same tensor (q/k/v after the attention norm, gate/up after the MLP norm) share it, so a Hessian
    is built once for the three. Returns ({linear name: owner name}, remove): the owner is the first linear that
    read the input, whose statistics the others share.

    With `layer` (the decoder layer holding the linears, run by sequential_pass's run()), the layer's forward
    stops as soon as every linear has read its input in it: the rest (the MLP's down projection, a quarter of the
    layer's matmuls) would compute an output nobody reads."""
    owners: dict[str, str] = {}
    last: dict = {"x": None, "owner": None}  # holds one input alive: the one the next linear may share
    seen: set[str] = set()  # the linears that have read their input in the layer's current forward

    def hook(name):
        def grab(module, args):
            x = args[0]
            if x is last["x"]:
                owners[name] = last["owner"]
            else:
                owners[name] = name
                last.update(x=x, owner=name)
                consume(name, x)
            seen.add(name)
            if layer is not None and len(seen) == len(linears):
                raise _Stop
        return grab

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    if layer is not None:  # a new forward of the layer: no linear has read its input in it yet
        handles.append(layer.register_forward_pre_hook(lambda module, args: seen.clear()))

    def remove() -> None:
        last.update(x=None, owner=None)
        for h in handles:
            h.remove()

    return owners, remove
