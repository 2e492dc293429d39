"""quantizers.codebook (nf4, fp4, fp4_e3m0, int4) on the reference backend: levels, the round trip within half the
largest gap, double quantization (quantizers.double_quant) of the scales, the tail block. The bounds' derivation:
tests/quantizers/conftest.py; bitsandbytes' agreement: test_bnb.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantizers import packing
from quantizers.double_quant import dynamic_map
from tests.quantizers.conftest import BLOCKS, CODEBOOKS, EPS, codebook, cover_radius, in_blocks, weights


@pytest.mark.parametrize("name", CODEBOOKS)
def test_codebook_levels_span_the_unit_interval_with_a_zero(name):
    levels = codebook(name).levels()
    assert torch.equal(levels, levels.sort().values) and levels.unique().numel() == levels.numel()
    # +-1 are levels, so the block absmax is exact and cover_radius is half the largest gap
    assert levels[0] == -1 and levels[-1] == 1
    assert (levels == 0).any()
    assert cover_radius(levels) == levels.diff().max().item() / 2


@pytest.mark.parametrize("name", CODEBOOKS)
@given(w=weights(), block=st.sampled_from(BLOCKS))
def test_codebook_round_trip_is_within_half_the_largest_gap(name, w, block):
    quantizer = codebook(name, block_size=block)
    qt = quantizer.quantize(w, name="w")
    w_hat = qt.dequantize()
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    absmax = in_blocks(w, block).abs().amax(dim=1)
    assert torch.equal(qt.scale_values(), absmax)  # one fp32 scale per block, the tail block included
    err = (in_blocks(qt.dequantize(torch.float32), block) - in_blocks(w, block)).abs()
    # slack: x = w * (1/a) and the table's midpoints each round once in fp32, so the chosen level can be
    # wrong only within a few eps of a midpoint; the product level * a rounds once more: 4 eps * a
    bound = absmax * (cover_radius(quantizer.levels()) + 4 * EPS)
    assert (err <= bound.unsqueeze(1)).all(), (err - bound.unsqueeze(1)).max()


@pytest.mark.parametrize("name", CODEBOOKS)
@given(w=weights(), block=st.sampled_from(BLOCKS), dq_block=st.sampled_from(BLOCKS))
def test_double_quant_round_trip(name, w, block, dq_block):
    """The codes are chosen against the exact absmax a; only the stored scale s changes, so
    |w - c s| <= |w - c a| + |c| |a - s| with |c| <= 1, and s itself obeys the 8-bit map's bound."""
    quantizer = codebook(name, block_size=block, double_quant=True, dq_block_size=dq_block)
    qt = quantizer.quantize(w, name="w")
    absmax = in_blocks(w, block).abs().amax(dim=1)
    scale = qt.scale_values()
    # the scales: centred on their mean m, absmax a2 per second-level block, nearest level of the dynamic map;
    # slack: centring, normalising and c * a2 + m each round once in fp32, at most eps of (a2 + |m| + a)
    mean = qt.scale.offset
    a2 = in_blocks(absmax - mean, dq_block).abs().amax(dim=1).repeat_interleave(dq_block)[: absmax.numel()]
    scale_bound = a2 * cover_radius(dynamic_map()) + 4 * EPS * (a2 + mean.abs() + absmax)
    assert ((scale - absmax).abs() <= scale_bound).all()
    err = (in_blocks(qt.dequantize(torch.float32), block) - in_blocks(w, block)).abs()
    # slack as in the single-level test, with the larger of a and |s| for the final product
    bound = (absmax * cover_radius(quantizer.levels()) + (scale - absmax).abs()
             + 4 * EPS * torch.maximum(absmax, scale.abs()))
    assert (err <= bound.unsqueeze(1)).all(), (err - bound.unsqueeze(1)).max()


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("block", BLOCKS)
def test_tail_block_gets_its_own_scale(name, block):
    """numel = 2.5 blocks: three scales, the last one the absmax of the half-block tail alone."""
    w = torch.linspace(-1, 1, block * 5 // 2) ** 3  # the tail's absmax (1.0) differs from the middle block's
    qt = codebook(name, block_size=block).quantize(w, name="w")
    tail = w[2 * block:]
    blocks = (w[:block], w[block:2 * block], tail)
    assert qt.scale_values().tolist() == [b.abs().max().item() for b in blocks]
    assert qt.qdata.numel() == packing.packed_nbytes(w.numel(), 4)
