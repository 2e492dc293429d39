"""quantizers.packing: k-bit codes round-trip exactly through bytes, in the documented layout."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantizers import packing


@given(bits=st.sampled_from(packing.SUPPORTED_BITS), n=st.integers(0, 3000), seed=st.integers(0, 2**31 - 1))
def test_pack_round_trips_exactly(bits, n, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=gen, dtype=torch.uint8)
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.uint8
    # the storage is exactly what the format promises: `bits` bits per code, rounded up to whole words
    words = 8 if bits == 3 else 8 // bits  # codes per 3-byte word (3-bit) or per byte
    assert packed.numel() == packing.packed_nbytes(n, bits) == -(-n // words) * (bits * words // 8)
    assert torch.equal(packing.unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", packing.SUPPORTED_BITS)
def test_extreme_codes_survive(bits):
    """All-ones codes fill every bit of a word: a shift or mask that is one bit off shows up here."""
    top = 2**bits - 1
    codes = torch.tensor([top, 0] * 13 + [top] * 7, dtype=torch.uint8)
    assert torch.equal(packing.unpack(packing.pack(codes, bits), bits, codes.numel()), codes)


def test_four_bit_layout_is_high_nibble_first():
    """bitsandbytes' layout: element 2i in the high nibble of byte i, element 2i+1 in the low one."""
    packed = packing.pack(torch.tensor([0x1, 0x2, 0xA, 0xF, 0x7], dtype=torch.uint8), 4)
    assert packed.tolist() == [0x12, 0xAF, 0x70]


def test_three_bit_layout_is_msb_first():
    # codes 0..7 written MSB first as 3-bit fields: 000 001 010 011 100 101 110 111
    word = int("000001010011100101110111", 2)
    packed = packing.pack(torch.arange(8, dtype=torch.uint8), 3)
    assert packed.tolist() == [(word >> 16) & 0xFF, (word >> 8) & 0xFF, word & 0xFF]


def test_unpack_rejects_a_length_that_does_not_fit():
    with pytest.raises(ValueError, match="cannot hold exactly 9 codes of 4 bits"):
        packing.unpack(torch.zeros(4, dtype=torch.uint8), 4, 9)


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_unsupported_width_names_the_supported_ones(bits):
    with pytest.raises(ValueError, match=rf"cannot pack {bits}-bit codes; supported widths are \(2, 3, 4, 8\)"):
        packing.pack(torch.zeros(8, dtype=torch.uint8), bits)
