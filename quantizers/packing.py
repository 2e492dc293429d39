"""Packing k-bit codes into bytes, k in {2, 3, 4, 8}.

The first code goes into the most significant bits, so 4-bit packing is byte-for-byte the
bitsandbytes layout (high nibble = even element). 3-bit codes pack eight to three bytes.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes needed to hold n codes of `bits` bits."""
    _check_bits(bits)
    if bits == 3:
        return -(-n // 8) * 3
    per_byte = 8 // bits
    return -(-n // per_byte)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: (n,) integer codes in [0, 2**bits) -> (packed_nbytes(n, bits),) uint8."""
    _check_bits(bits)
    codes = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return codes.clone()
    group = 8 if bits == 3 else 8 // bits  # codes that fill a whole number of bytes
    pad = (-codes.numel()) % group
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    if bits == 4:  # the hot path: one shift and one or
        return (codes[0::2] << 4) | codes[1::2]
    c = codes.view(-1, group).to(torch.int32)
    shifts = torch.arange(group - 1, -1, -1, dtype=torch.int32, device=codes.device) * bits
    word = (c << shifts).sum(dim=1, dtype=torch.int32)  # bits * group = 8 or 24 bits per word
    nbytes = bits * group // 8
    byte_shifts = torch.arange(nbytes - 1, -1, -1, dtype=torch.int32, device=codes.device) * 8
    return ((word.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack: (nbytes,) uint8 -> (n,) uint8 codes."""
    _check_bits(bits)
    packed = packed.reshape(-1)
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold exactly {n} codes of {bits} bits")
    if bits == 8:
        return packed.view(torch.uint8)[:n]
    if bits == 4:
        return torch.stack((packed >> 4, packed & 0xF), dim=1).reshape(-1)[:n]
    group = 8 if bits == 3 else 8 // bits
    nbytes = bits * group // 8
    b = packed.view(-1, nbytes).to(torch.int32)
    byte_shifts = torch.arange(nbytes - 1, -1, -1, dtype=torch.int32, device=packed.device) * 8
    word = (b << byte_shifts).sum(dim=1, dtype=torch.int32)
    shifts = torch.arange(group - 1, -1, -1, dtype=torch.int32, device=packed.device) * bits
    codes = (word.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.to(torch.uint8).reshape(-1)[:n]


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; supported widths are {SUPPORTED_BITS}")
