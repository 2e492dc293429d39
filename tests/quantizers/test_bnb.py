"""The reference backend against bitsandbytes: same tables, same codes, same dequantized values.

bitsandbytes is called directly here (bitsandbytes.functional), not only through quantizers/bnb.py, so a
mistake in our wrapper cannot hide one in the reference.
"""

import math

import bitsandbytes.functional as F
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.registry import QUANTIZERS
from quantizers import bnb, packing
from quantizers.base import dequantize_reference
from quantizers.double_quant import dynamic_map
from quantizers.fp4 import FP4Config
from quantizers.nf4 import nf4_code

EPS = torch.finfo(torch.float32).eps
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (64, 128): whole blocks; (37, 51): 1887 elements, a tail block at every size and an odd last dimension
# (bitsandbytes takes another dequantization path then); (1000,): 1-D
SHAPES = [(64, 128), (37, 51), (1000,)]


def weight(shape, dtype, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) ** 3  # heavy tails: levels near +-1 and near 0 both get used
    w.view(-1)[::5] = 0.0
    return w.to(dtype)


def reference(name, **fields):
    return QUANTIZERS.get(name)(backend="reference", **fields).build()


# ------------------------------------------------------------------ the tables


def test_nf4_table_built_with_scipy_equals_bitsandbytes():
    assert torch.equal(nf4_code(), F.get_4bit_type("nf4", device="cpu"))


def test_fp4_table_equals_bitsandbytes():
    assert torch.equal(FP4Config().code(), F.get_4bit_type("fp4", device="cpu"))


def test_double_quant_dynamic_map_equals_bitsandbytes():
    assert torch.equal(dynamic_map(), F.create_dynamic_map())


# ------------------------------------------------------------------ nf4 / fp4, single level


def levels_of(packed: torch.Tensor, code: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) the normalised level each stored 4-bit code stands for (bitsandbytes' layout: high nibble
    first)."""
    return code[packing.unpack(packed.reshape(-1), 4, n).long()]


def assert_same_quantization(quant_type, w, block):
    packed, state = F.quantize_4bit(w, blocksize=block, compress_statistics=False, quant_type=quant_type)
    qt = reference(quant_type, block_size=block).quantize(w, name="w")
    # tolerance 0 for both: the same fp32 absmax per block (the tail block's from the tail alone), and the
    # nearest level of identical tables (tested above) with bitsandbytes' tie rule. Levels, not code
    # indices, are compared: fp4 has two codes for 0 (+0 and -0) and the byte padding a tail is free.
    assert torch.equal(qt.scale, state.absmax)
    assert torch.equal(levels_of(qt.qdata, qt.code, w.numel()), levels_of(packed, state.code, w.numel()))
    return qt, packed, state


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [32, 64, 256, 4096])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_4bit_quantization_matches_bitsandbytes(quant_type, block, shape, dtype):
    assert_same_quantization(quant_type, weight(shape, dtype), block)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@given(seed=st.integers(0, 2**31 - 1), log2_scale=st.integers(-30, 30), block=st.sampled_from([32, 64, 4096]))
def test_4bit_quantization_matches_bitsandbytes_on_random_weights(quant_type, seed, log2_scale, block):
    assert_same_quantization(quant_type, weight((24, 96), torch.float32, seed) * 2.0**log2_scale, block)


# bitsandbytes 0.50's CPU dequantize_4bit is wrong when a block spans rows (see quantizers/bnb.py), so its
# values are compared where blocks tile the rows, where its generic path runs (odd last dimension) and 1-D
DEQUANTIZE_CASES = [((64, 128), 32), ((64, 128), 128), ((37, 51), 64), ((37, 51), 4096), ((1000,), 64)]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,block", DEQUANTIZE_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_4bit_dequantization_matches_bitsandbytes(quant_type, shape, block, dtype):
    qt, packed, state = assert_same_quantization(quant_type, weight(shape, dtype), block)
    # tolerance 0: the same levels and absmax, one fp32 multiply, one rounding to the output dtype
    expected = F.dequantize_4bit(packed, state).reshape(shape)  # bitsandbytes returns 1-D as (1, n)
    assert torch.equal(qt.dequantize(), expected)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape,block", DEQUANTIZE_CASES, ids=str)
def test_the_two_layouts_are_interchangeable(quant_type, double_quant, shape, block):
    """What our bitsandbytes backend stores decodes under the reference dequantizer, and a reference tensor
    decodes under bitsandbytes' kernel through quantizers.bnb.quant_state (the path taken on CUDA)."""
    w = weight(shape, torch.float32)
    fields = {"block_size": block, "double_quant": double_quant}
    ours = QUANTIZERS.get(quant_type)(backend="bitsandbytes", **fields).build().quantize(w, name="w")
    assert ours.backend == "bitsandbytes"
    for qt in (ours, reference(quant_type, **fields).quantize(w, name="w")):
        kernel = F.dequantize_4bit(qt.qdata.view(-1, 1), quant_state=bnb.quant_state(qt, torch.float32))
        # tolerance 0: the same codes, tables and scales, one fp32 multiply on each side
        assert torch.equal(kernel.reshape(shape), dequantize_reference(qt, torch.float32))


# ------------------------------------------------------------------ double quantization


def dq_tolerance(absmax: torch.Tensor, offset: torch.Tensor, dq_block: int) -> torch.Tensor:
    """(n_blocks,) allowed |reference - bitsandbytes| per first-level block under double quantization.

    bitsandbytes' CPU kernel finds the 8-bit code of each centred scale by an approximate binary search
    and may return a neighbour of the nearest level (and it stores -1 for the map's first entry, -0.993),
    so the two scales may differ by one gap of the dynamic map times that second-level block's absmax a2.
    The 4-bit codes are chosen against the exact absmax on both sides, so a weight differs by
    |level| * |scale difference| <= the scale difference. Slack: each side's scale is level * a2 + mean in
    fp32, two roundings of at most eps (a2 + |mean|) each, so 4 eps (a2 + |mean|) between the two."""
    a2 = (absmax - offset).abs()
    a2 = torch.nn.functional.pad(a2, (0, (-a2.numel()) % dq_block)).view(-1, dq_block).amax(dim=1)
    a2 = a2.repeat_interleave(dq_block)[: absmax.numel()]
    return a2 * dynamic_map().diff().max() + 4 * EPS * (a2 + offset.abs())


def per_block(x: torch.Tensor, block: int) -> torch.Tensor:
    flat = x.reshape(-1).float()
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % block)).view(-1, block)


@pytest.mark.parametrize("name", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_double_quant_matches_bitsandbytes_compress_statistics(name, shape, dtype):
    """bitsandbytes' own double quantization (compress_statistics: block 64, second level 256)."""
    w = weight(shape, dtype, seed=1)
    packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type=name)
    qt = reference(name, block_size=64, double_quant=True, dq_block_size=256).quantize(w, name="w")
    assert torch.equal(qt.scale.offset, state.offset)  # the mean of the same fp32 absmax
    assert (qt.scale.qdata.int() - state.absmax.int()).abs().max() <= 1  # at most a neighbouring 8-bit code
    absmax = per_block(w, 64).abs().amax(dim=1)
    tol = dq_tolerance(absmax, qt.scale.offset, 256)
    bnb_scale = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert ((qt.scale_values() - bnb_scale).abs() <= tol).all()
    bnb_w = F.dequantize_4bit(packed, state).float().reshape(shape)
    diff = per_block(qt.dequantize(torch.float32) - bnb_w, 64).abs()
    # plus the rounding of bitsandbytes' output to the input dtype: half an ulp of the value, which eps |w|
    # covers with room for a value slightly above |w|
    rounding = per_block(w, 64).abs() * torch.finfo(dtype).eps
    assert (diff <= tol.unsqueeze(1) + rounding).all()


@pytest.mark.parametrize("name", ["nf4", "fp4"])
@pytest.mark.parametrize("block,dq_block", [(32, 32), (64, 256), (128, 4096), (4096, 64)])
def test_double_quant_backends_agree_at_every_block_size(name, block, dq_block):
    w = weight((96, 160), torch.float32, seed=2)
    fields = {"block_size": block, "double_quant": True, "dq_block_size": dq_block}
    ref = reference(name, **fields).quantize(w, name="w")
    ours = QUANTIZERS.get(name)(backend="bitsandbytes", **fields).build().quantize(w, name="w")
    assert torch.equal(ref.scale.offset, ours.scale.offset)
    tol = dq_tolerance(per_block(w, block).abs().amax(dim=1), ref.scale.offset, dq_block)
    assert ((ref.scale_values() - ours.scale_values()).abs() <= tol).all()
    diff = per_block(ref.dequantize() - ours.dequantize(), block).abs()
    assert (diff <= tol.unsqueeze(1)).all()  # dq_tolerance's reasoning; fp32 output, no further rounding


def test_nf4_double_quant_storage_is_4_127_bits_per_parameter():
    """QLoRA's figure, derived from the format: 4-bit codes, an 8-bit absmax per 64 weights, an fp32
    absmax per 256 of those, and constants (16-entry fp32 table, 256-entry fp32 map, fp32 mean)."""
    rows = cols = 4096
    n = rows * cols
    constants_bits = 16 * 32 + 256 * 32 + 32
    derived = 4 + 8 / 64 + 32 / (64 * 256) + constants_bits / n
    assert abs(derived - 4.127) < 0.0005  # "4.127 to 0.001"

    w = weight((rows, cols), torch.bfloat16, seed=3)
    qt = reference("nf4", block_size=64, double_quant=True, dq_block_size=256).quantize(w, name="w")
    assert qt.bits_per_param == pytest.approx(derived, rel=1e-12)  # float division only

    packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    bnb_bytes = sum(t.numel() * t.element_size() for t in (
        packed, state.absmax, state.code, state.offset.reshape(1), state.state2.absmax, state.state2.code,
    ))
    assert qt.nbytes == bnb_bytes
    assert math.isclose(bnb_bytes * 8 / n, derived, rel_tol=1e-12)


# ------------------------------------------------------------------ int8 (LLM.int8 vector-wise)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(48, 80), (1, 64), (37, 51)], ids=str)
def test_int8_rowwise_matches_bitsandbytes(threshold, dtype, shape):
    w = (weight(shape, torch.float32, seed=4) * 3).to(dtype)  # |randn|^3 * 3 >= 6 in a few columns
    w[0] = 0.0  # an all-zero row: its scale is 0 and must not divide by zero
    codes, row_stats, outlier_cols = F.int8_vectorwise_quant(w.float().clone(), threshold=threshold)
    qt = reference("int8", outlier_threshold=threshold).quantize(w, name="w")
    # tolerance 0: the same round(w * (127 / absmax)) in fp32 over the same values
    assert torch.equal(qt.qdata, codes)
    assert torch.equal(qt.scale * 127, row_stats) or torch.equal(qt.scale, row_stats / 127)
    expected = F.int8_vectorwise_dequant(codes, row_stats)
    if threshold:
        assert torch.equal(qt.outlier_cols.long(), outlier_cols)
        assert outlier_cols.numel() > 0 or shape[0] == 1
        expected[:, outlier_cols] = w.float()[:, outlier_cols].half().float()  # LLM.int8 keeps them in fp16
    # bitsandbytes multiplies by stats * (1/127), the reference by stats / 127: one rounding each, so
    # within 2 eps of the value
    torch.testing.assert_close(qt.dequantize(torch.float32), expected, rtol=2 * EPS, atol=0)
    # the bitsandbytes backend behind our interface is the same
    backend = QUANTIZERS.get("int8")(outlier_threshold=threshold, backend="bitsandbytes").build()
    ours = backend.quantize(w, name="w")
    assert torch.equal(ours.qdata, qt.qdata) and torch.equal(ours.dequantize(), qt.dequantize())
