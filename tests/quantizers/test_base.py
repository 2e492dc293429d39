"""Properties every quantizer must have (quantizers.base's contract), on the reference backend: exact zeros, shape and
dtype, storage from the format's description and from the shape alone, NaN/Inf refused naming the tensor."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.config import quantizer_config
from harness.registry import QUANTIZERS
from tests.quantizers.conftest import CODEBOOKS, DTYPES, make_weight, weights

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


# every quantizer's storage from its shape alone (what the memory predictor sizes a model by)
STORAGE_NODES = [{"name": "nf4"}, {"name": "nf4", "double_quant": True}, {"name": "fp4", "double_quant": True,
              "dq_block_size": 128}, {"name": "int4", "block_size": 128}, {"name": "fp4_e3m0"},
              {"name": "intk", "bits": 3, "group_size": 32}, {"name": "intk", "bits": 2, "group_size": 64},
              {"name": "int8"}, {"name": "int8", "granularity": "block"}, {"name": "nf4", "backend": "bitsandbytes",
                                                                          "double_quant": True}]


@pytest.mark.parametrize("node", STORAGE_NODES, ids=str)
@pytest.mark.parametrize("shape", [(96, 128), (576, 1536), (33, 576)], ids=str)
def test_storage_bytes_from_the_shape_equals_the_quantized_tensors_bytes(node, shape):
    config = quantizer_config({**node, "compute_dtype": "float32"})
    assert config.storage_bytes(shape) == config.build().quantize(torch.randn(*shape)).nbytes
