"""The vocabulary every quantizer speaks: granularity, QuantizedTensor, Quantizer and its config.

A quantized weight is always  w = (value(q) - zero_point) * scale, where
  value(q) = code[q]       for codebook formats (nf4, fp4, int4 as a 15-level table, ...)
  value(q) = q as a number for integer grids (intk's unsigned codes, int8's signed codes)
and scale / zero_point hold one entry per block, row or group (the granularity). When the scales
are themselves quantized (double quantization), `scale` is a nested QuantizedTensor.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar, Union

import torch

from quantizers import packing

# ---------------------------------------------------------------- granularity


@dataclass(frozen=True)
class PerRow:
    """One scale per output row (LLM.int8's vector-wise quantization)."""


@dataclass(frozen=True)
class PerBlock:
    """One scale per `size` consecutive elements of the row-major flattened tensor (bitsandbytes)."""

    size: int


@dataclass(frozen=True)
class PerGroup:
    """One scale (and zero point) per `size` consecutive input features within each row (GPTQ, QA-LoRA)."""

    size: int


Granularity = Union[PerRow, PerBlock, PerGroup]


class Backend(enum.Enum):
    auto = "auto"  # bitsandbytes where it supports the format and device, the reference otherwise
    reference = "reference"  # pure torch, every format, every device
    bitsandbytes = "bitsandbytes"


COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ---------------------------------------------------------------- the quantized tensor


@dataclass
class QuantizedTensor:
    """Packed codes plus every constant needed to rebuild the weight.

    qdata: (packed_nbytes(numel, bits),) uint8 packed codes, or int8 (rows, cols) for 8-bit signed grids.
    scale: (n_scales,) float tensor, or a nested QuantizedTensor when double-quantized.
    code: (2**bits,) lookup table for codebook formats, None for integer grids.
    zero_point: (n_scales,) tensor for asymmetric grids, else None.
    offset: scalar added after dequantizing (double quantization subtracts the mean of the scales).
    outlier_cols / outlier_values: LLM.int8 columns kept in 16-bit; values are (rows, n_cols) float16.
    """

    qdata: torch.Tensor
    scale: torch.Tensor | QuantizedTensor
    granularity: Granularity
    bits: int
    shape: torch.Size
    dtype: torch.dtype
    code: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    outlier_cols: torch.Tensor | None = None
    outlier_values: torch.Tensor | None = None
    format: str = ""
    backend: str = "reference"

    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = (
        "qdata", "scale", "code", "zero_point", "offset", "outlier_cols", "outlier_values",
    )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def block_size(self) -> int | None:
        return getattr(self.granularity, "size", None)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor, flattened with dotted names (nested scales become 'scale.qdata', ...)."""
        out = {}
        for name in self.TENSOR_FIELDS:
            value = getattr(self, name)
            if isinstance(value, QuantizedTensor):
                out.update({f"{name}.{k}": v for k, v in value.tensors().items()})
            elif value is not None:
                out[name] = value
        return out

    @property
    def nbytes(self) -> int:
        """Exact storage in bytes: codes and every constant, counted from the real tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_param(self) -> float:
        return self.nbytes * 8 / self.numel

    def scale_values(self) -> torch.Tensor:
        """(n_scales,) float32 scales, dequantizing them first if they are double-quantized."""
        if isinstance(self.scale, QuantizedTensor):
            return self.scale.dequantize(torch.float32)
        return self.scale.float()

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """-> tensor of `shape` in `dtype` (default: the original dtype)."""
        dtype = dtype or self.dtype
        return DEQUANTIZERS.get(self.backend, dequantize_reference)(self, dtype)

    def with_tensors(self, tensors: dict[str, torch.Tensor]) -> QuantizedTensor:
        """Inverse of tensors(): a copy whose stored tensors are taken from `tensors` (same dotted names)."""
        changes = {}
        for name in self.TENSOR_FIELDS:
            value = getattr(self, name)
            if isinstance(value, QuantizedTensor):
                prefix = name + "."
                changes[name] = value.with_tensors(
                    {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                )
            elif value is not None:
                changes[name] = tensors[name]
        return self.replace(**changes)

    def replace(self, **changes) -> QuantizedTensor:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return QuantizedTensor(**values)


# backend name -> its dequantizer, for tensors a backend produced; a backend module adds itself on import
# (quantizers.bnb), so this module never imports a backend. Anything else, the reference, dequantizes.
DEQUANTIZERS: dict = {}


def dequantize_reference(qt: QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
    """The pure-torch dequantizer, shared by every format: w = (value(q) - zero_point) * scale + offset,
    computed in fp32 and then cast. On the CPU a compiled kernel (quantizers.kernels) does it in one
    pass; the eager torch code below is the fallback and gives the same bits."""
    from quantizers import kernels  # cheap: the kernel itself is built on first use

    n = qt.numel
    scale = qt.scale_values()
    group = qt.shape[-1] if isinstance(qt.granularity, PerRow) else qt.granularity.size
    if qt.code is not None:
        table = qt.code
    elif qt.qdata.dtype == torch.int8:  # signed codes, which the kernel reads as bytes
        table = torch.arange(256, dtype=torch.uint8, device=qt.qdata.device).view(torch.int8).float()
    else:
        table = torch.arange(2**qt.bits, dtype=torch.float32, device=qt.qdata.device)
    out = kernels.dequantize(qt.qdata, qt.bits, table, scale, qt.zero_point, qt.offset, group, n, dtype)
    if out is None:
        if qt.code is not None and qt.bits == 4:
            # a 256-entry table maps each byte straight to its two values, so the unpack and the lookup
            # are one gather instead of two shifts, a stack and a second gather
            values = _pair_table(qt.code)[qt.qdata.reshape(-1).int()].reshape(-1)[:n]
        else:
            codes = qt.qdata.reshape(-1) if qt.qdata.dtype == torch.int8 else packing.unpack(qt.qdata, qt.bits, n)
            values = qt.code.float()[codes.int()] if qt.code is not None else codes.float()
        pad = (-n) % group  # a tail shorter than one block has its own scale, as in bitsandbytes
        if pad:
            values = torch.nn.functional.pad(values, (0, pad))
        values = values.view(-1, group)
        if qt.zero_point is not None:
            values = values - qt.zero_point.float().view(-1, 1)
        out = (values * scale.view(-1, 1)).reshape(-1)[:n]
        if qt.offset is not None:
            out = out + qt.offset
    out = out.reshape(qt.shape)
    if qt.outlier_cols is not None and qt.outlier_cols.numel():
        # via fp32, as the eager path converts them, when the kernel's output is already in `dtype`
        out[:, qt.outlier_cols] = qt.outlier_values.float().to(out.dtype)
    return out.to(dtype)


_PAIR_TABLES: dict[tuple, torch.Tensor] = {}


def _pair_table(code: torch.Tensor) -> torch.Tensor:
    """(256, 2) float32: byte -> (code[high nibble], code[low nibble]); cached per code table."""
    key = (code.device, code.data_ptr(), tuple(code.tolist()))
    table = _PAIR_TABLES.get(key)
    if table is None:
        byte = torch.arange(256, device=code.device)
        table = torch.stack((code.float()[byte >> 4], code.float()[byte & 0xF]), dim=1).contiguous()
        _PAIR_TABLES[key] = table
    return table


# ---------------------------------------------------------------- quantizers and their configs


@dataclass
class QuantizerConfig:
    """Fields every quantizer has. Subclasses add their own and validate them in __post_init__."""

    name: str = "?"
    backend: Backend = Backend.auto
    # what QuantLinear dequantizes into for its matmul. auto: chosen by the command from the device (bf16 where
    # it is native, else fp32; harness.device), before any layer is built
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.backend, str):
            self.backend = _enum_field(Backend, "backend", self.backend)
        if self.compute_dtype not in COMPUTE_DTYPES and self.compute_dtype != "auto":
            raise ValueError(
                f"{self.name}.compute_dtype={self.compute_dtype!r} is not supported; use auto or one of "
                f"{sorted(COMPUTE_DTYPES)}"
            )

    def build(self) -> Quantizer:
        raise NotImplementedError

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes a weight of `shape` occupies once quantized (codes + every constant), computed from the shape
        alone, so the memory predictor can size a 70B model on the meta device. Equals QuantizedTensor.nbytes
        (tested); data-dependent extras (int8 outlier columns) are not included."""
        raise NotImplementedError(f"{type(self).__name__} does not implement storage_bytes(shape)")


def compute_dtype_of(config: QuantizerConfig) -> torch.dtype:
    if config.compute_dtype == "auto":
        raise ValueError(f"{config.name}.compute_dtype=auto must be resolved for a device before layers are built "
                         "(harness.device.resolve_compute_dtype; quantize_model does it)")
    return COMPUTE_DTYPES[config.compute_dtype]


def _enum_field(enum_cls, field_name: str, value):
    try:
        return enum_cls(value)
    except ValueError:
        raise ValueError(
            f"{field_name}={value!r} is not accepted; use one of {[m.value for m in enum_cls]}"
        ) from None


def check_block_size(owner: str, field_name: str, value: int, low: int = 32, high: int = 4096) -> None:
    """Block and group sizes: powers of two between low and high (what bitsandbytes' kernels take)."""
    if not isinstance(value, int) or value < low or value > high or value & (value - 1):
        raise ValueError(
            f"{owner}.{field_name}={value!r} is not accepted; use a power of two from {low} to {high} (e.g. 64)"
        )


class Quantizer(ABC):
    """Turns a weight into a QuantizedTensor. One instance per configuration."""

    def __init__(self, config: QuantizerConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def quantize(self, w: torch.Tensor, name: str = "tensor") -> QuantizedTensor:
        """w: any shape (2-D for row/group granularity), fp32/bf16/fp16."""

    def dequantize(self, qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return qt.dequantize(dtype)

    def levels(self) -> torch.Tensor | None:
        """The normalised code levels in [-1, 1] (sorted, distinct), or None where levels vary per group."""
        return None

    @property
    def compute_dtype(self) -> torch.dtype:
        return compute_dtype_of(self.config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def check_finite(w: torch.Tensor, name: str) -> None:
    """Reject NaN/Inf up front: one bad value would poison a whole block's scale silently."""
    if not torch.isfinite(w).all():
        bad = (~torch.isfinite(w)).sum().item()
        raise ValueError(f"cannot quantize {name}: it holds {bad} NaN/Inf value(s) (shape {tuple(w.shape)})")


def blockwise_absmax(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w: any shape -> (blocks (n_blocks, block) fp32 zero-padded, absmax (n_blocks,) fp32)."""
    flat = w.reshape(-1).float()
    pad = (-flat.numel()) % block
    if pad:  # zeros never raise a block's absmax, so a short tail keeps its own scale
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.view(-1, block)
    return blocks, blocks.abs().amax(dim=1)


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """x in [-1, 1] (any shape), code (K,) table (any order, duplicates allowed) -> uint8 index of the
    nearest entry. Ties go to the lower value, as bitsandbytes' bucketize does."""
    values, first = _distinct_sorted(code)
    bounds = (values[:-1] + values[1:]) / 2
    return first[torch.bucketize(x, bounds)].to(torch.uint8)


def _distinct_sorted(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, order = torch.sort(code.float(), stable=True)
    keep = torch.ones_like(values, dtype=torch.bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep], order[keep]


def code_levels(code: torch.Tensor) -> torch.Tensor:
    """Sorted distinct values of a code table."""
    return _distinct_sorted(code)[0]

