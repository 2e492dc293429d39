"""The compiled dequantization kernel (quantizers.kernels) gives exactly the bits of a plain dequantization.

`plain` below is the definition written out the slow, obvious way: unpack with quantizers.packing, look
each code up, subtract the zero point, multiply by its block's scale (double-quantized scales rebuilt
the same way), all in fp32, then cast. Every comparison is of raw bits, so -0.0, subnormals and
overflow to inf must match too; no tolerance anywhere.
"""

import pytest
import torch

from harness.registry import QUANTIZERS
from quantizers import kernels, packing
from quantizers.base import PerBlock, PerRow, QuantizedTensor

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BITS_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
# odd element counts leave half a byte and a short tail block; 1023x1029 is big enough for several threads
SHAPES = ((33, 65), (7,), (1023, 1029))


def plain_scales(scale) -> torch.Tensor:
    if not isinstance(scale, QuantizedTensor):
        return scale.float()
    codes = packing.unpack(scale.qdata.view(torch.uint8), scale.bits, scale.numel).long()
    per_element = scale.scale.float().repeat_interleave(scale.block_size)[: scale.numel]
    return scale.code.float()[codes] * per_element + scale.offset


def plain(qt: QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
    n = qt.numel
    codes = packing.unpack(qt.qdata.view(torch.uint8), qt.bits, n).long()
    if qt.code is not None:
        values = qt.code.float()[codes]
    else:  # integer grids: int8 codes are signed
        values = (codes.to(torch.uint8).view(torch.int8) if qt.qdata.dtype == torch.int8 else codes).float()
    group = qt.shape[-1] if isinstance(qt.granularity, PerRow) else qt.block_size
    if qt.zero_point is not None:
        values = values - qt.zero_point.float().repeat_interleave(group)[:n]
    out = (values * plain_scales(qt.scale).repeat_interleave(group)[:n]).reshape(qt.shape)
    if qt.outlier_cols is not None:
        out[:, qt.outlier_cols] = qt.outlier_values.float()
    return out.to(dtype)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = BITS_OF[want.dtype]
    mismatch = (got.view(bits) != want.view(bits)).nonzero()
    assert mismatch.numel() == 0, f"{len(mismatch)} values differ, first at {mismatch[0].tolist()}"


@pytest.fixture(scope="module", params=["native", "portable"])
def built(request):
    """The kernel library built for this CPU (with its SIMD paths, where it has them) and without."""
    saved = dict(kernels._state)
    kernels._state.clear()
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "portable":
            patch.setattr(kernels, "_ARCH_FLAGS", ([],))
        lib = kernels.library()
    kernels._state.clear()
    kernels._state.update(saved)
    if lib is None:
        pytest.skip("no C compiler here to build the kernel")
    return lib


@pytest.fixture
def kernel_calls(built, monkeypatch):
    """Counts dequantizations that the compiled kernel did (rather than the eager fallback)."""
    monkeypatch.setattr(kernels, "_state", {"lib": built})
    calls = []
    real = kernels.dequantize

    def spy(*args, **kw):
        out = real(*args, **kw)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(kernels, "dequantize", spy)
    return calls


def weight(shape, seed=0) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) ** 3  # heavy tails, varied scales
    w.view(-1)[::5] = 0.0
    return w


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("double_quant", (False, True))
@pytest.mark.parametrize("name", ("nf4", "fp4", "int4"))
def test_codebooks_match_the_plain_dequantization(name, double_quant, shape, kernel_calls):
    qt = QUANTIZERS.get(name)(backend="reference", double_quant=double_quant).build().quantize(weight(shape))
    for dtype in DTYPES:
        assert_same_bits(qt.dequantize(dtype), plain(qt, dtype))
    assert all(kernel_calls)


@pytest.mark.parametrize("block", (32, 4096))
def test_other_block_sizes_match(block, kernel_calls):
    qt = QUANTIZERS.get("nf4")(backend="reference", block_size=block).build().quantize(weight((5, 999)))
    for dtype in DTYPES:
        assert_same_bits(qt.dequantize(dtype), plain(qt, dtype))
    assert all(kernel_calls)


@pytest.mark.parametrize(
    "name, fields",
    [("int8", {"granularity": "row"}), ("int8", {"granularity": "block"}), ("int8", {"outlier_threshold": 2.0}),
     ("intk", {"bits": 4, "group_size": 32}), ("intk", {"bits": 8, "group_size": 64})],
)
def test_integer_grids_match(name, fields, kernel_calls):
    qt = QUANTIZERS.get(name)(backend="reference", **fields).build().quantize(weight((37, 128)))
    for dtype in DTYPES:
        assert_same_bits(qt.dequantize(dtype), plain(qt, dtype))
    assert all(kernel_calls)


def test_extreme_values_round_like_torch(kernel_calls):
    """Every code with scales whose products are fp16-subnormal, fp32-subnormal, past fp16's or bf16's range,
    or zero. Scales stay finite (quantizers refuse NaN/Inf): inf * 0 would be a NaN, whose bits torch itself
    does not fix (its vectorized bf16 cast gives 0xffff, its scalar one 0x7fc0)."""
    gen = torch.Generator().manual_seed(1)
    n, block = 1_000_001, 64
    code = QUANTIZERS.get("fp4")().build().code  # holds both +0.0 and -0.0
    magnitudes = torch.tensor([1e-6, 3e-5, 1e-39, 2e-38, 1e5, 7e4, 0.0, 1.0, 1.7e38])
    scale = magnitudes[torch.randint(len(magnitudes), (-(-n // block),), generator=gen)]
    scale *= 1 + torch.rand(scale.shape, generator=gen)  # off the round values, so rounding matters; < 3.4e38
    qdata = torch.randint(0, 256, (-(-n // 2),), dtype=torch.uint8, generator=gen)
    qt = QuantizedTensor(qdata, scale, PerBlock(block), 4, torch.Size([n]), torch.float32, code=code, format="fp4")
    for dtype in DTYPES:
        assert_same_bits(qt.dequantize(dtype), plain(qt, dtype))
    assert all(kernel_calls)


def test_eager_mode_is_the_same(monkeypatch, kernel_calls):
    qt = QUANTIZERS.get("nf4")(backend="reference", double_quant=True).build().quantize(weight((33, 65)))
    monkeypatch.setenv("HARNESS_DEQUANT", "eager")
    assert_same_bits(qt.dequantize(torch.bfloat16), plain(qt, torch.bfloat16))
    assert not any(kernel_calls)


def test_bad_mode_names_the_accepted_ones(monkeypatch):
    qt = QUANTIZERS.get("nf4")(backend="reference").build().quantize(weight((4, 64)))
    monkeypatch.setenv("HARNESS_DEQUANT", "fast")
    with pytest.raises(ValueError, match="HARNESS_DEQUANT='fast'.*'auto'.*'eager'"):
        qt.dequantize(torch.float32)


def test_without_a_compiler_it_warns_once_and_falls_back(monkeypatch):
    qt = QUANTIZERS.get("int4")(backend="reference").build().quantize(weight((9, 64)))
    monkeypatch.setattr(kernels, "_state", {})  # forget the library built by earlier tests
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(UserWarning, match="dequantization kernel unavailable"):
        first = qt.dequantize(torch.float16)
    assert kernels.library() is None  # remembered: no second attempt, no second warning
    assert_same_bits(first, plain(qt, torch.float16))


def test_sizes_that_do_not_fit_are_refused():
    """The kernel trusts its sizes, so a short scale must be an error, not a read past the end."""
    if kernels.library() is None:
        pytest.skip("no C compiler here to build the kernel")
    with pytest.raises(ValueError, match="scale holds 1 values; 200 elements in groups of 64 need 4"):
        kernels.dequantize(torch.zeros(100, dtype=torch.uint8), 4, torch.zeros(16), torch.ones(1), None, None, 64,
                           200, torch.float32)
