"""quantizers.intk: the group-wise asymmetric k-bit grid's round trip within half a step, and the ranges and widths it
refuses. The bounds' derivation: tests/quantizers/conftest.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.registry import QUANTIZERS
from tests.quantizers.conftest import EPS, weights


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@given(data=st.data(), group=st.sampled_from([32, 64, 128]))
def test_intk_round_trip_is_within_half_a_step(bits, data, group):
    """w ~ (q - z) s with q in 0..qmax: the grid covers [min, max] of the group (and 0), so the error
    is at most s/2 per group; s is the stored fp16 scale."""
    # down to 2^-40: the fp16 scale is then subnormal or its smallest value, and must still cover the group;
    # up to 2^8: a group range beyond 65504 * qmax cannot have an fp16 scale (test_intk_rejects_...)
    w = data.draw(weights(two_d=True, cols_multiple_of=group, log2_scales=st.integers(-40, 8)))
    qt = QUANTIZERS.get("intk")(bits=bits, group_size=group).build().quantize(w, name="w")
    assert qt.scale.dtype == qt.zero_point.dtype == torch.float16
    scale = qt.scale.float().view(-1, 1)
    err = (qt.dequantize(torch.float32) - w.float()).reshape(-1, group).abs()
    # slack: w / s rounds once (<= 2^k eps in grid units before round()), (q - z) is exact, (q - z) s rounds
    # once (<= 2^k eps * s): 2 * 2^k eps * s in all
    assert (err <= scale * (0.5 + 2 * 2**bits * EPS)).all()


@pytest.mark.parametrize("bits", [2, 8])
def test_intk_rejects_a_range_an_fp16_scale_cannot_hold(bits):
    w = torch.zeros(2, 32)
    w[1, 3] = torch.finfo(torch.float16).max * (2**bits - 1) * 1.01
    with pytest.raises(ValueError, match=r"cannot quantize big\.weight with intk: a group spans .* fp16"):
        QUANTIZERS.get("intk")(bits=bits).build().quantize(w, name="big.weight")


def test_intk_rejects_a_width_that_is_not_a_multiple_of_the_group():
    with pytest.raises(ValueError, match=r"group_size=32.*w has shape \(4, 48\)"):
        QUANTIZERS.get("intk")(group_size=32).build().quantize(torch.randn(4, 48), name="w")
