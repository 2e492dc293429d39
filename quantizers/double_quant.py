"""Double quantization (QLoRA): quantize the first-level scales themselves.

The fp32 absmax of every 64-weight block costs 32/64 = 0.5 bits per parameter. QLoRA subtracts their
mean (they are all positive, so centring uses the signed 8-bit range) and stores them as 8-bit codes of
the dynamic map in blocks of 256 with one fp32 absmax each: 8/64 + 32/(64*256) = 0.127 bits/param.
"""

from __future__ import annotations

import functools

import torch

from quantizers.base import PerBlock, QuantizedTensor, blockwise_absmax, nearest_code


@functools.cache
def dynamic_map() -> torch.Tensor:
    """(256,) sorted fp32: the signed dynamic-tree 8-bit map of Dettmers (2015), bitsandbytes' default.

    One sign bit; the remaining 7 bits split between a decimal exponent 10**-6 .. 10**0 and a linear
    fraction, so small magnitudes get as many distinct values as large ones. Decade i (0..6) holds
    2**i fractions: the midpoints of 2**i + 1 equal steps across [0.1, 1]. Both signs, plus 0 and 1,
    make 2 * 127 + 2 = 256 values.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += mids + [-m for m in mids]
    return torch.tensor(sorted(values), dtype=torch.float32)


def quantize_scales(absmax: torch.Tensor, block_size: int = 256) -> QuantizedTensor:
    """absmax: (n,) fp32 first-level scales -> nested QuantizedTensor (8-bit codes, fp32 absmax per block)."""
    offset = absmax.float().mean()
    centred = absmax.float() - offset
    blocks, absmax2 = blockwise_absmax(centred, block_size)
    normalised = (blocks / absmax2.clamp(min=1e-38).unsqueeze(1)).clamp(-1, 1)
    codes = nearest_code(normalised, dynamic_map().to(absmax.device)).reshape(-1)[: absmax.numel()]
    return QuantizedTensor(
        qdata=codes.contiguous(),
        scale=absmax2,
        granularity=PerBlock(block_size),
        bits=8,
        shape=absmax.shape,
        dtype=torch.float32,
        code=dynamic_map().to(absmax.device),
        offset=offset.reshape(()),
        format="dynamic8",
    )
