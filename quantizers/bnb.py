"""The bitsandbytes backend behind the same QuantizedTensor interface.

bitsandbytes' 4-bit layout is the reference layout (high nibble first, fp32 absmax per block, nested
8-bit absmax with an offset for double quantization), so its results convert to QuantizedTensor
without copying codes, and a QuantizedTensor converts back to a QuantState for its kernels.
"""

from __future__ import annotations

import functools
import logging

import torch

from quantizers.base import DEQUANTIZERS, PerBlock, PerRow, QuantizedTensor, dequantize_reference


@functools.cache
def _functional():
    # bitsandbytes logs a harmless warning about an optional `kernels` package on CPU import
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as F
    except Exception:  # not installed, or no kernel library for this platform
        return None
    return F


def available() -> bool:
    return _functional() is not None


def supports(device: torch.device) -> bool:
    return available() and torch.device(device).type in ("cpu", "cuda")


def quantize_4bit(w: torch.Tensor, config) -> QuantizedTensor:
    """config: a CodebookConfig with bnb_type 'nf4' or 'fp4'."""
    F = _functional()
    packed, state = F.quantize_4bit(
        w.contiguous(), blocksize=config.block_size, compress_statistics=False, quant_type=config.bnb_type
    )
    scale = state.absmax
    if config.double_quant:
        # bitsandbytes' compress_statistics fixes the second-level block at 256; do it ourselves so
        # dq_block_size is honoured, with the same steps (mean offset + blockwise dynamic 8-bit map)
        offset = scale.mean()
        codes, state2 = F.quantize_blockwise(scale - offset, blocksize=config.dq_block_size)
        scale = QuantizedTensor(
            qdata=codes, scale=state2.absmax, granularity=PerBlock(config.dq_block_size), bits=8,
            shape=scale.shape, dtype=torch.float32, code=state2.code, offset=offset.reshape(()),
            format="dynamic8", backend="bitsandbytes",
        )
    return QuantizedTensor(
        qdata=packed.reshape(-1), scale=scale, granularity=PerBlock(config.block_size), bits=4,
        shape=w.shape, dtype=w.dtype, code=state.code, format=config.name, backend="bitsandbytes",
    )


def quant_state(qt: QuantizedTensor, dtype: torch.dtype):
    """The bitsandbytes QuantState describing `qt` (a 4-bit codebook tensor)."""
    F = _functional()
    nested = qt.scale if isinstance(qt.scale, QuantizedTensor) else None
    state2 = None
    if nested is not None:
        state2 = F.QuantState(absmax=nested.scale, code=nested.code, blocksize=nested.block_size, dtype=torch.float32)
    return F.QuantState(
        absmax=nested.qdata if nested is not None else qt.scale,
        shape=qt.shape, code=qt.code, blocksize=qt.block_size, quant_type=qt.format,
        dtype=dtype, offset=nested.offset if nested is not None else None, state2=state2,
    )


def from_quant_state(packed: torch.Tensor, state) -> QuantizedTensor:
    """Inverse of quant_state(): a bitsandbytes Params4bit's packed codes and QuantState as a QuantizedTensor
    (the same tensors, not copies)."""
    scale = state.absmax
    if state.nested:
        nested = state.state2
        scale = QuantizedTensor(
            qdata=state.absmax, scale=nested.absmax, granularity=PerBlock(nested.blocksize), bits=8,
            shape=state.absmax.shape, dtype=torch.float32, code=nested.code, offset=state.offset.reshape(()),
            format="dynamic8", backend="bitsandbytes",
        )
    return QuantizedTensor(
        qdata=packed.reshape(-1), scale=scale, granularity=PerBlock(state.blocksize), bits=4, shape=state.shape,
        dtype=state.dtype, code=state.code, format=state.quant_type, backend="bitsandbytes",
    )


def dequantize(qt: QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' kernels where they cover the format, the reference otherwise.

    Not on the CPU: bitsandbytes 0.50's CPU dequantize_4bit returns wrong values when a block is longer
    than a row (e.g. 64x128 at block 256) or, in bf16, when the last block is a short tail. The layouts
    are the same, so the reference gives bitsandbytes' values there (tests/test_bnb_agreement.py).
    """
    F = _functional()
    fourbit = qt.bits == 4 and qt.format in ("nf4", "fp4") and isinstance(qt.granularity, PerBlock)
    if F is None or not fourbit or qt.qdata.device.type == "cpu":
        return dequantize_reference(qt, dtype)
    # bitsandbytes returns a 1-D shape as (1, n)
    return F.dequantize_4bit(qt.qdata.view(-1, 1), quant_state=quant_state(qt, dtype)).reshape(qt.shape)


DEQUANTIZERS["bitsandbytes"] = dequantize


def int8_vectorwise(w: torch.Tensor, threshold: float = 0.0):
    """bitsandbytes' LLM.int8 row-wise kernel on a 2-D weight -> (int8 codes, row absmax, outlier columns).
    Its CUDA kernel takes fp16 only (bitsandbytes' own Int8Params casts to fp16 first), its CPU kernel fp32."""
    a = w.detach().to(torch.float16 if w.is_cuda else torch.float32).contiguous().clone()  # zeroes outliers in place
    return _functional().int8_vectorwise_quant(a, threshold=threshold)


def int8_rowwise(w: torch.Tensor, threshold: float, name: str) -> QuantizedTensor:
    """LLM.int8 vector-wise quantization with bitsandbytes' kernel (w: 2-D)."""
    codes, row_stats, outlier_cols = int8_vectorwise(w, threshold)
    cols = outlier_cols if outlier_cols is not None else torch.empty(0, dtype=torch.int64)
    return QuantizedTensor(
        qdata=codes, scale=row_stats / 127.0, granularity=PerRow(), bits=8, shape=w.shape, dtype=w.dtype,
        outlier_cols=cols.to(torch.int32) if threshold > 0 else None,
        outlier_values=w[:, cols].to(torch.float16) if threshold > 0 else None,
        format="int8", backend="reference",  # dequantizing int8 is one multiply; the reference does it
    )
