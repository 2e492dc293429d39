"""A quantized weight that PEFT, transformers and FSDP still see as the weight of an nn.Linear.

`QuantizedWeight` is a tensor subclass with the *logical* shape (out_features, in_features) and the compute
dtype, holding only a QuantizedTensor (packed codes + constants). `QuantLinear` is an nn.Linear whose weight
is one. Why this shape and not a module of our own: every PEFT tuner (LoRA, LoHa, LoKr, AdaLoRA) dispatches
on `isinstance(layer, nn.Linear)` and sizes its factors from `weight.shape`, so with a logical-shape weight
every adapter attaches to every quantizer through PEFT's own code, with no per-adapter glue. (bitsandbytes'
Linear4bit shows the other way: its packed (n/2, 1) weight is why PEFT's LoHa/LoKr fail on it.)

What the subclass does:
  F.linear(x, w, b)  dequantizes w into the compute dtype inside a custom autograd function; backward
                     dequantizes again rather than keeping the full-precision weight alive between the two
                     (that copy is what 4-bit training exists to avoid). The weight never gets a gradient.
  .to(device)        moves the packed tensors; a dtype cast of the module leaves storage and compute dtype
                     alone (see QuantLinear._apply).
  w += delta, w -= delta, w.copy_(dense)
                     dequantize, add, re-quantize with the same quantizer (QLoRA-style merge), in place:
                     every alias (`.data`, `.detach()`) sees the new codes because they share one storage box.
  anything else      runs on a dequantized dense copy (e.g. torch.allclose(w, ...)); in-place ops other than
                     the three above raise, naming the op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantizers.base import QuantizedTensor, Quantizer

aten = torch.ops.aten


class _Storage:
    """The one mutable box every alias of a QuantizedWeight shares (a re-quantized weight may change the
    shape or dtype of its constants, e.g. QA-LoRA's fractional zero points, so tensors are not copied in
    place: the box's QuantizedTensor is replaced)."""

    __slots__ = ("qt", "quantizer")

    def __init__(self, qt: QuantizedTensor, quantizer: Quantizer | None) -> None:
        self.qt, self.quantizer = qt, quantizer


class QuantizedWeight(torch.Tensor):
    """A frozen (out_features, in_features) weight stored as a QuantizedTensor; dtype = the compute dtype."""

    _storage: _Storage

    @staticmethod
    def __new__(cls, storage: _Storage, dtype: torch.dtype):
        qt = storage.qt
        return torch.Tensor._make_wrapper_subclass(cls, tuple(qt.shape), dtype=dtype, device=qt.qdata.device,
                                                   requires_grad=False)

    def __init__(self, storage: _Storage, dtype: torch.dtype) -> None:
        self._storage = storage

    @classmethod
    def build(cls, qt: QuantizedTensor, quantizer: Quantizer | None, dtype: torch.dtype) -> QuantizedWeight:
        if len(qt.shape) != 2:
            raise ValueError(f"a quantized linear weight must be 2-D, got shape {tuple(qt.shape)}")
        return cls(_Storage(qt, quantizer), dtype)

    # ------------------------------------------------------------ the interface adapters use

    @property
    def quantized(self) -> QuantizedTensor:
        return self._storage.qt

    @property
    def quantizer(self) -> Quantizer | None:
        return self._storage.quantizer

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(out_features, in_features) dense copy in `dtype` (default: the compute dtype)."""
        return self._storage.qt.dequantize(dtype or self.dtype)

    def replace_quantized(self, qt: QuantizedTensor) -> None:
        """Swap in another QuantizedTensor of the same logical shape (merge, unmerge, LoftQ); all aliases see it."""
        if tuple(qt.shape) != tuple(self.shape):
            raise ValueError(f"replacement has shape {tuple(qt.shape)}, the weight is {tuple(self.shape)}")
        self._storage.qt = qt

    def requantize_(self, dense: torch.Tensor) -> None:
        """Quantize `dense` with this weight's own quantizer and store the result in place."""
        if self.quantizer is None:
            raise RuntimeError("this QuantizedWeight has no quantizer to re-quantize with (built without one)")
        qt = self._storage.qt
        self.replace_quantized(self.quantizer.quantize(dense.detach().to(qt.qdata.device, qt.dtype), "merged"))

    @property
    def data(self) -> QuantizedWeight:
        return torch.Tensor.data.__get__(self)  # an alias sharing the storage box (detach -> _alias)

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        # torch's setter swaps the tensor metadata but not this Python object's storage box, so without this
        # `param.data = new` (PEFT's safe_merge) would silently keep the old codes.
        if tuple(value.shape) != tuple(self.shape):
            raise ValueError(f"cannot set .data of shape {tuple(value.shape)} on a weight of shape {tuple(self.shape)}")
        if isinstance(value, QuantizedWeight):
            torch.Tensor.data.__set__(self, value)
            self._storage = value._storage  # as with any tensor: the two now share their storage
        else:
            self.requantize_(value)  # a dense tensor is quantized into place, as copy_ does

    @property
    def nbytes_quantized(self) -> int:
        return self._storage.qt.nbytes

    def __repr__(self) -> str:
        qt = self._storage.qt
        return (f"QuantizedWeight(shape={tuple(self.shape)}, format={qt.format}, "
                f"bits_per_param={qt.bits_per_param:.3f}, dtype={self.dtype}, device={self.device})")

    def __deepcopy__(self, memo):
        qt = self._storage.qt
        copy = QuantizedWeight(_Storage(qt.with_tensors({k: v.clone() for k, v in qt.tensors().items()}),
                                        self.quantizer), self.dtype)
        return nn.Parameter(copy, requires_grad=False) if getattr(self, "_is_param", False) else copy

    def __tensor_flatten__(self):
        return list(self._storage.qt.tensors()), (self._storage.qt, self.quantizer, self.dtype)

    @staticmethod
    def __tensor_unflatten__(tensors, context, outer_size, outer_stride):
        qt, quantizer, dtype = context
        return QuantizedWeight(_Storage(qt.with_tensors(tensors), quantizer), dtype)

    # ------------------------------------------------------------ torch integration

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and isinstance(args[1] if len(args) > 1 else kwargs.get("weight"), QuantizedWeight):
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return _QuantizedLinear.apply(x, weight, bias)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            return handler(*args, **kwargs)
        if func._schema.is_mutable:
            raise NotImplementedError(
                f"QuantizedWeight does not support the in-place op {func}; supported: add_, sub_, copy_ "
                "(re-quantizing). Use .dequantize() for a dense copy."
            )
        # Everything else sees the dense weight: correct, at the cost of one dequantization.
        dense = [a.dequantize() if isinstance(a, QuantizedWeight) else a for a in args]
        dense_kwargs = {k: v.dequantize() if isinstance(v, QuantizedWeight) else v for k, v in kwargs.items()}
        return func(*dense, **dense_kwargs)


def _alias(w: QuantizedWeight, *_, **__) -> QuantizedWeight:
    return QuantizedWeight(w._storage, w.dtype)


def _to_copy(w: QuantizedWeight, dtype=None, device=None, non_blocking=False, **_) -> QuantizedWeight:
    qt = w._storage.qt
    if device is not None:
        qt = qt.with_tensors({k: v.to(device, non_blocking=non_blocking) for k, v in qt.tensors().items()})
    return QuantizedWeight(_Storage(qt, w.quantizer), dtype or w.dtype)


def _clone(w: QuantizedWeight, *_, **__) -> QuantizedWeight:
    qt = w._storage.qt
    return QuantizedWeight(_Storage(qt.with_tensors({k: v.clone() for k, v in qt.tensors().items()}),
                                    w.quantizer), w.dtype)


def _add_(w: QuantizedWeight, other, alpha=1) -> QuantizedWeight:
    w.requantize_(w.dequantize(torch.float32) + alpha * _dense(other))
    return w


def _sub_(w: QuantizedWeight, other, alpha=1) -> QuantizedWeight:
    w.requantize_(w.dequantize(torch.float32) - alpha * _dense(other))
    return w


def _copy_(w: QuantizedWeight, src, non_blocking=False) -> QuantizedWeight:
    if isinstance(src, QuantizedWeight):
        qt = src._storage.qt
        w.replace_quantized(qt.with_tensors({k: v.to(w.device, copy=True) for k, v in qt.tensors().items()}))
    else:
        w.requantize_(src)
    return w


def _dense(t) -> torch.Tensor:
    return t.dequantize(torch.float32) if isinstance(t, QuantizedWeight) else torch.as_tensor(t).float()


_HANDLERS = {
    aten.detach.default: _alias,
    aten.alias.default: _alias,
    aten._to_copy.default: _to_copy,
    aten.clone.default: _clone,
    aten.add_.Tensor: _add_,
    aten.sub_.Tensor: _sub_,
    aten.copy_.default: _copy_,
}


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


class _QuantizedLinear(torch.autograd.Function):
    """y = x W^T + b with W dequantized on the fly, in the compute dtype (or autocast's dtype when active)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
        ctx.weight, ctx.dtype, ctx.x_dtype = weight, dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        # every layer of every forward passes here, so no-op casts and contexts are skipped, not called:
        # on a small model their dispatch costs as much as the dequantization itself
        args = (_cast(x, dtype), weight.dequantize(dtype), None if bias is None else _cast(bias, dtype))
        if autocast:
            with torch.autocast(device_type, enabled=False):
                return F.linear(*args)  # in autocast's dtype, as F.linear's output would be
        # otherwise in x's dtype, so a bf16-compute layer inside an fp32 model hands fp32 on
        return _cast(F.linear(*args), x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # computed in the forward's dtype whatever dtype the gradient arrives in (autocast may differ)
            w = ctx.weight.dequantize(ctx.dtype)
            grad_x = _cast(_cast(grad_out, ctx.dtype) @ w, ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_bias


class QuantLinear(nn.Linear):
    """An nn.Linear whose weight is a QuantizedWeight: y = x W^T + b, x: (..., in_features).

    The state dict holds the packed tensors under `weight.<name>` (e.g. weight.qdata, weight.scale.qdata),
    so saving a quantized model stores its real bytes.
    """

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a dense weight
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        bias = None if bias is None else nn.Parameter(bias.detach().to(weight.dtype), requires_grad=False)
        self.register_parameter("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantizer: Quantizer, name: str = "linear") -> QuantLinear:
        return cls.from_quantized(linear, quantizer.quantize(linear.weight.detach(), name=f"{name}.weight"), quantizer)

    @classmethod
    def from_quantized(cls, linear: nn.Linear, qt: QuantizedTensor, quantizer: Quantizer) -> QuantLinear:
        """`linear` (for its bias) with a weight already quantized, e.g. by a calibrated quantizer's pass."""
        if tuple(qt.shape) != tuple(linear.weight.shape):
            raise ValueError(f"a quantized weight of shape {tuple(qt.shape)} cannot replace a linear layer of "
                             f"shape {tuple(linear.weight.shape)}")
        return cls(QuantizedWeight.build(qt, quantizer, quantizer.compute_dtype), linear.bias)

    @property
    def quantized(self) -> QuantizedTensor:
        return self.weight.quantized

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.weight.dtype

    def dequantized_weight(self) -> torch.Tensor:
        """(out_features, in_features) in the compute dtype."""
        return self.weight.dequantize()

    def _apply(self, fn, recurse=True):
        # Device moves apply; dtype casts (.half(), .to(bf16)) do not: the stored format is fixed (fp32 absmax
        # in fp16 loses range; bitsandbytes reads absmax and code as fp32) and the compute dtype is a config
        # choice, so both stay, and so does the bias, which lives in the compute dtype.
        def move_only(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if moved.dtype == t.dtype:
                return moved
            return t.to(moved.device)

        return super()._apply(move_only, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, tensor in self.weight.quantized.tensors().items():
            destination[f"{prefix}weight.{key}"] = tensor if keep_vars else tensor.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        qt = self.weight.quantized
        tensors = {}
        for key, own in qt.tensors().items():
            full = f"{prefix}weight.{key}"
            if full not in state_dict:
                missing_keys.append(full)
            elif state_dict[full].shape != own.shape:
                error_msgs.append(f"size mismatch for {full}: checkpoint {tuple(state_dict[full].shape)}, "
                                  f"layer {tuple(own.shape)}")
            else:
                tensors[key] = state_dict[full].to(own.device, own.dtype)
        if len(tensors) == len(qt.tensors()):
            self.weight.replace_quantized(qt.with_tensors(tensors))
        if self.bias is not None:
            if prefix + "bias" in state_dict:
                with torch.no_grad():
                    self.bias.copy_(state_dict[prefix + "bias"])
            else:
                missing_keys.append(prefix + "bias")
        if strict:
            own_keys = {f"{prefix}weight.{k}" for k in qt.tensors()} | {prefix + "bias"}
            unexpected_keys += [k for k in state_dict if k.startswith(prefix) and k not in own_keys]

    def extra_repr(self) -> str:
        q = self.weight.quantized
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={q.format}, "
                f"bits_per_param={q.bits_per_param:.3f}, compute_dtype={self.compute_dtype}")
