"""quantizers.int8 on the reference backend: block-wise and row-wise round trips, LLM.int8's fp16 outlier columns, and
the row-wise format's need for a matrix. The bounds' derivation: tests/quantizers/conftest.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.registry import QUANTIZERS
from tests.quantizers.conftest import BLOCKS, EPS, cover_radius, in_blocks, weights


@given(w=weights(), block=st.sampled_from(BLOCKS))
def test_int8_blockwise_round_trip(w, block):
    quantizer = QUANTIZERS.get("int8")(granularity="block", block_size=block, backend="reference").build()
    qt = quantizer.quantize(w, name="w")
    absmax = in_blocks(w, block).abs().amax(dim=1)
    err = (in_blocks(qt.dequantize(torch.float32), block) - in_blocks(w, block)).abs()
    # levels k/127: bound a/254. Slack: w * (127/a) rounds twice before round(), a/127 and q * (a/127) once
    # each: at most 3 eps * a in all
    bound = absmax * (cover_radius(quantizer.levels()) + 4 * EPS)
    assert (err <= bound.unsqueeze(1)).all()


@given(w=weights(two_d=True))
def test_int8_rowwise_round_trip(w):
    qt = QUANTIZERS.get("int8")(backend="reference").build().quantize(w, name="w")
    absmax = w.float().abs().amax(dim=1, keepdim=True)
    err = (qt.dequantize(torch.float32) - w.float()).abs()
    assert (err <= absmax * (0.5 / 127 + 4 * EPS)).all()  # as blockwise, one block per row


@given(w=weights(two_d=True, log2_scales=st.integers(-2, 3)))
def test_int8_outlier_columns_are_kept_in_fp16(w):
    """LLM.int8: columns holding |w| >= 6 stay in fp16; the rest are int8 against the row's absmax over
    its values below 6 (as bitsandbytes: only the outliers themselves leave the absmax, not their columns).
    Scales 2^-2..2^3 make some tensors with outliers and some without."""
    qt = QUANTIZERS.get("int8")(outlier_threshold=6.0, backend="reference").build().quantize(w, name="w")
    x = w.float()
    cols = (x.abs() >= 6).any(dim=0)
    assert qt.outlier_cols.tolist() == cols.nonzero().reshape(-1).tolist()
    w_hat = qt.dequantize(torch.float32)
    assert torch.equal(w_hat[:, cols], x[:, cols].half().float())  # an fp16 copy, nothing else
    assert (qt.qdata[:, cols] == 0).all()
    absmax = x.masked_fill(x.abs() >= 6, 0).abs().amax(dim=1, keepdim=True)
    # slack: as in the blockwise int8 test
    assert ((w_hat - x)[:, ~cols].abs() <= absmax * (0.5 / 127 + 4 * EPS)).all()


def test_int8_rowwise_needs_a_matrix():
    with pytest.raises(ValueError, match=r"needs a 2-D weight; w has shape \(64,\)"):
        QUANTIZERS.get("int8")(backend="reference").build().quantize(torch.randn(64), name="w")
