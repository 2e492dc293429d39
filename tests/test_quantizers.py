"""Properties every quantizer must have, on the reference backend (bitsandbytes: test_bnb_agreement.py).

The round-trip bounds are derived from the formats. A block with absmax a is mapped to x = w / a in
[-1, 1] and x is replaced by its nearest level, so |w - w_hat| <= a * (largest distance from a point of
[-1, 1] to a level); when the levels include -1 and 1 (they do here) that is half the largest gap between
adjacent levels. Integer grids are the same with levels k / qmax. Slack terms for float rounding are
justified where they appear; eps is float32's, in which every quantizer computes.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.registry import QUANTIZERS
from quantizers import packing
from quantizers.double_quant import dynamic_map

EPS = torch.finfo(torch.float32).eps
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CODEBOOKS = ("nf4", "fp4", "fp4_e3m0", "int4")
BLOCKS = tuple(2**k for k in range(5, 13))  # 32 .. 4096, every size the configs accept


def make_weight(shape, dtype, seed, log2_scale, kind) -> torch.Tensor:
    """A finite test weight of `shape` in `dtype`, with exact zeros at every 7th position."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    if kind == "heavy":  # a few large values dominate their block, the rest fall near zero
        w = w**3
    elif kind == "uniform":
        w = torch.rand(shape, generator=gen) * 2 - 1
    elif kind == "sparse":  # whole blocks of zeros: absmax 0 must not divide by zero
        w = w * (torch.rand(shape, generator=gen) < 0.05)
    elif kind == "constant":  # every |w| equal: all of them sit exactly on the levels +-1
        w = torch.sign(w)
    w = w * 2.0**log2_scale
    w.view(-1)[::7] = 0.0
    return w.to(dtype)


@st.composite
def weights(draw, two_d=False, cols_multiple_of=1, log2_scales=None, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    if log2_scales is None:
        # fp16 tops out at 65504: heavy tails (|randn|^3 < ~200) times 2^8 stay finite; fp32 and bf16 share
        # an exponent range, so 2^+-60 exercises magnitudes far from 1 without overflowing
        log2_scales = st.integers(-14, 8) if dtype is torch.float16 else st.integers(-60, 60)
    cols = cols_multiple_of * draw(st.integers(1, max(1, 300 // cols_multiple_of)))
    if two_d or draw(st.booleans()):
        shape = (draw(st.integers(1, 24)), cols)
    else:  # 1-D and 3-D tensors too: blocks run over the flattened tensor
        shape = draw(st.sampled_from([(cols,), (2, 3, cols)]))
    kind = draw(st.sampled_from(["normal", "heavy", "uniform", "sparse", "constant"]))
    return make_weight(shape, dtype, draw(st.integers(0, 2**31 - 1)), draw(log2_scales), kind)


def in_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x: any shape -> (n_blocks, block) fp32, zero-padded like the quantizers' tail block."""
    flat = x.reshape(-1).float()
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % block)).view(-1, block)


def cover_radius(levels: torch.Tensor) -> float:
    """Largest distance from a point of [-1, 1] to its nearest level (levels sorted)."""
    return max(levels.diff().max().item() / 2, 1 - levels[-1].item(), levels[0].item() + 1)


def codebook(name, **fields):
    return QUANTIZERS.get(name)(backend="reference", **fields).build()


# ------------------------------------------------------------------ codebooks (nf4, fp4, fp4_e3m0, int4)


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


# ------------------------------------------------------------------ integer grids (int8, intk)


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


# ------------------------------------------------------------------ every quantizer

QUANTIZER_CASES = [
    *[(name, {"double_quant": dq}) for name in CODEBOOKS for dq in (False, True)],
    ("int8", {"granularity": "row"}),
    ("int8", {"granularity": "row", "outlier_threshold": 6.0}),
    ("int8", {"granularity": "block"}),
    *[("intk", {"bits": k, "group_size": 32}) for k in (2, 3, 4, 8)],
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in f.items())}" for n, f in QUANTIZER_CASES]


def build(name, fields):
    return QUANTIZERS.get(name)(backend="reference", **fields).build()


@pytest.mark.parametrize("name,fields", QUANTIZER_CASES, ids=CASE_IDS)
@given(w=weights(two_d=True, cols_multiple_of=32, log2_scales=st.integers(-4, 4)))
def test_exact_zero_stays_zero(name, fields, w):
    """Every format here has a zero level (codebooks: checked above; integer grids: q = z / q = 0)."""
    qt = build(name, fields).quantize(w, name="w")
    assert (qt.dequantize(torch.float32)[w == 0] == 0).all()


@pytest.mark.parametrize("name,fields", QUANTIZER_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shape_and_dtype_are_preserved(name, fields, dtype):
    w = make_weight((48, 96), dtype, seed=1, log2_scale=0, kind="normal")
    qt = build(name, fields).quantize(w, name="w")
    assert qt.shape == w.shape and qt.dtype == dtype
    w_hat = qt.dequantize()
    assert w_hat.shape == w.shape and w_hat.dtype == dtype
    # the own-dtype result is the fp32 one rounded to the dtype: within one ulp (half for round-to-nearest,
    # a whole one for a kernel that truncates); the absolute term is the dtype's subnormal spacing
    info = torch.finfo(dtype)
    torch.testing.assert_close(
        w_hat.float(), qt.dequantize(torch.float32), rtol=info.eps, atol=info.tiny * info.eps
    )


def expected_nbytes(name, fields, shape) -> int:
    """Storage derived from the format's description (not from the tensors)."""
    n, fp32, fp16 = math.prod(shape), 4, 2
    if name in CODEBOOKS:
        blocks = -(-n // 64)
        codes = -(-n // 2) + 16 * fp32  # 4-bit codes + the 16-entry fp32 table
        if not fields["double_quant"]:
            return codes + blocks * fp32
        # 8-bit scale codes, an fp32 absmax per 256 of them, the 256-entry fp32 map and the fp32 mean
        return codes + blocks + -(-blocks // 256) * fp32 + 256 * fp32 + fp32
    if name == "int8" and fields["granularity"] == "block":
        return n + -(-n // 64) * fp32
    if name == "int8":
        return n + shape[0] * fp32  # int8 codes + an fp32 scale per row (outliers: see the test)
    k, groups = fields["bits"], n // fields["group_size"]
    words = 8 if k == 3 else 8 // k
    return -(-n // words) * (k * words // 8) + groups * (fp16 + fp16)  # codes + fp16 scale and zero point


@pytest.mark.parametrize("name,fields", QUANTIZER_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", [(64, 128), (37, 96)], ids=str)
def test_bits_per_param_follow_from_the_format(name, fields, shape):
    w = make_weight(shape, torch.bfloat16, seed=2, log2_scale=0, kind="normal")
    w[:, 5] = 7.0  # one outlier column for int8's threshold 6.0; harmless for the others
    qt = build(name, fields).quantize(w, name="w")
    expected = expected_nbytes(name, fields, shape)
    if fields.get("outlier_threshold"):
        expected += 1 * 4 + shape[0] * 2  # one int32 column index and that column in fp16
    assert qt.nbytes == expected
    assert qt.bits_per_param == expected * 8 / math.prod(shape)


BNB_CASES = [("nf4", {"backend": "bitsandbytes"}), ("fp4", {"backend": "bitsandbytes", "double_quant": True}),
             ("int8", {"backend": "bitsandbytes", "outlier_threshold": 6.0})]


REJECT_CASES = [(n, {"backend": "reference", **f}) for n, f in QUANTIZER_CASES] + BNB_CASES


@pytest.mark.parametrize("name,fields", REJECT_CASES, ids=CASE_IDS + [f"{n}-bnb" for n, _ in BNB_CASES])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_nan_and_inf_are_rejected_naming_the_tensor(name, fields, bad):
    w = make_weight((4, 64), torch.bfloat16, seed=3, log2_scale=0, kind="normal")
    w[2, 17] = bad
    with pytest.raises(ValueError, match=r"cannot quantize model\.layers\.3\.mlp\.weight: .*1 NaN/Inf"):
        QUANTIZERS.get(name)(**fields).build().quantize(w, name="model.layers.3.mlp.weight")


@pytest.mark.parametrize("bits", [2, 8])
def test_intk_rejects_a_range_an_fp16_scale_cannot_hold(bits):
    w = torch.zeros(2, 32)
    w[1, 3] = torch.finfo(torch.float16).max * (2**bits - 1) * 1.01
    with pytest.raises(ValueError, match=r"cannot quantize big\.weight with intk: a group spans .* fp16"):
        QUANTIZERS.get("intk")(bits=bits).build().quantize(w, name="big.weight")


def test_intk_rejects_a_width_that_is_not_a_multiple_of_the_group():
    with pytest.raises(ValueError, match=r"group_size=32.*w has shape \(4, 48\)"):
        QUANTIZERS.get("intk")(group_size=32).build().quantize(torch.randn(4, 48), name="w")


def test_int8_rowwise_needs_a_matrix():
    with pytest.raises(ValueError, match=r"needs a 2-D weight; w has shape \(64,\)"):
        QUANTIZERS.get("int8")(backend="reference").build().quantize(torch.randn(64), name="w")
