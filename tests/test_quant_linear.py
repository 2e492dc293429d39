"""QuantLinear: y = x W^T + b over the dequantized weight, gradients for the input only, exact storage."""

import pytest
import torch

from harness.registry import QUANTIZERS
from quantizers.linear import QuantLinear

IN, OUT, BATCH = 192, 48, 5
COMPUTE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CASES = {
    "nf4": ("nf4", {"backend": "reference"}),
    "nf4_dq_bnb": ("nf4", {"backend": "bitsandbytes", "double_quant": True}),
    "fp4_e3m0_dq": ("fp4_e3m0", {"double_quant": True}),
    "int4": ("int4", {}),
    "int8_outliers": ("int8", {"outlier_threshold": 6.0}),
    "int3_g64": ("intk", {"bits": 3, "group_size": 64}),
}


def make_layer(case, compute_dtype, bias=True, seed=0):
    name, fields = CASES[case]
    torch.manual_seed(seed)
    linear = torch.nn.Linear(IN, OUT, bias=bias)
    with torch.no_grad():
        linear.weight[:, 7] *= 100  # an outlier column for int8's threshold (nn.Linear's init is < 0.1)
    quantizer = QUANTIZERS.get(name)(compute_dtype=compute_dtype, **fields).build()
    return QuantLinear.from_linear(linear, quantizer, name=f"test.{case}")


def matmul_tolerance(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Allowed |computed - exact| for a @ b (both already in `dtype`), elementwise.

    PyTorch's CPU matmuls accumulate in fp32 (for bf16/fp16 too) and round the result to `dtype` once:
    K eps_32 |a| @ |b| for the sum (textbook bound for K terms), eps_dtype |a| @ |b| for the final
    rounding and the bias add (each at most half an ulp of a value bounded by |a| @ |b| + |bias|)."""
    k = a.shape[-1]
    magnitude = a.abs().double() @ b.abs().double()
    return (k * torch.finfo(torch.float32).eps + torch.finfo(dtype).eps) * magnitude


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("compute_dtype", COMPUTE)
def test_forward_is_x_times_the_dequantized_weight_plus_bias(case, compute_dtype):
    layer = make_layer(case, compute_dtype)
    dtype = COMPUTE[compute_dtype]
    w = layer.dequantized_weight()
    assert w.dtype == dtype and w.shape == (OUT, IN)
    assert torch.equal(w, layer.qweight.dequantize(dtype))
    x = torch.randn(2, BATCH, IN)  # leading dimensions pass through
    y = layer(x)
    assert y.shape == (2, BATCH, OUT) and y.dtype == x.dtype
    xc = x.to(dtype)
    exact = xc.double() @ w.double().t() + layer.bias.double()
    tol = matmul_tolerance(xc, w.t(), dtype) + torch.finfo(dtype).eps * layer.bias.double().abs()
    assert ((y.double() - exact).abs() <= tol).all()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("compute_dtype", COMPUTE)
def test_input_gradient_is_grad_out_times_w_and_the_weight_gets_none(case, compute_dtype):
    layer = make_layer(case, compute_dtype)
    dtype = COMPUTE[compute_dtype]
    x = torch.randn(BATCH, IN, requires_grad=True)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    w = layer.dequantized_weight()
    g = grad_out.to(dtype)
    exact = g.double() @ w.double()
    # the same reasoning as the forward, K = out_features; x.grad is then cast to fp32 exactly
    assert ((x.grad.double() - exact).abs() <= matmul_tolerance(g, w, dtype)).all()
    assert list(layer.parameters()) == []  # nothing an optimizer could update
    assert all(not b.requires_grad and b.grad is None for b in layer.buffers())


def test_backward_keeps_no_full_precision_weight_alive():
    """The dequantized weight is rebuilt in backward, not saved from the forward."""
    layer = make_layer("nf4", "float32")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = layer(torch.randn(BATCH, IN, requires_grad=True))
    assert (OUT, IN) not in saved and (IN, OUT) not in saved
    y.sum().backward()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_buffers_hold_exactly_the_quantized_bytes(case, bias):
    layer = make_layer(case, "bfloat16", bias=bias)
    bias_bytes = OUT * 2 if bias else 0  # the bias is kept in the compute dtype, bf16
    expected = layer.qweight.nbytes + bias_bytes
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) == expected
    assert sum(t.numel() * t.element_size() for t in layer.state_dict().values()) == expected


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips(case):
    source, target = make_layer(case, "float32", seed=1), make_layer(case, "float32", seed=2)
    x = torch.randn(BATCH, IN)
    assert not torch.equal(source(x), target(x))
    target.load_state_dict(source.state_dict())
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cast", [torch.float16, torch.bfloat16, torch.float64, "half", "double"], ids=str)
def test_dtype_casts_leave_the_quantized_storage_alone(case, cast):
    """fp32 absmax cast to fp16 would lose range, and bitsandbytes reads its absmax and code as fp32."""
    layer = make_layer(case, "bfloat16")
    x = torch.randn(BATCH, IN)
    before, dtypes = layer(x), {k: v.dtype for k, v in layer.state_dict().items()}
    layer = getattr(layer, cast)() if isinstance(cast, str) else layer.to(cast)
    assert {k: v.dtype for k, v in layer.state_dict().items()} == dtypes
    assert torch.equal(layer(x), before)


def test_device_moves_apply():
    layer = make_layer("nf4_dq_bnb", "bfloat16")
    assert all(b.device.type == "cpu" for b in layer.to("cpu").buffers())
    meta = make_layer("int8_outliers", "bfloat16").to("meta")  # a device that exists everywhere
    assert all(b.device.type == "meta" for b in meta.buffers())
    assert meta.qweight.qdata.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_cuda_forward_matches_cpu(case):
    layer = make_layer(case, "float32")
    x = torch.randn(BATCH, IN)
    cpu = layer(x)
    gpu = layer.to("cuda")(x.cuda()).cpu()
    # fp32 both sides; the GPU may use TF32 or another summation order: allow the matmul bound at bf16's eps
    tol = matmul_tolerance(x, layer.to("cpu").dequantized_weight().t(), torch.bfloat16)
    assert ((gpu.double() - cpu.double()).abs() <= tol).all()


def test_rejects_a_weight_that_is_not_a_matrix():
    qt = QUANTIZERS.get("nf4")(backend="reference").build().quantize(torch.randn(4, 8, 8), name="w")
    with pytest.raises(ValueError, match=r"needs a 2-D weight, got shape \(4, 8, 8\)"):
        QuantLinear(qt)


def test_from_linear_rejects_nan_naming_the_weight():
    linear = torch.nn.Linear(IN, OUT)
    with torch.no_grad():
        linear.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"cannot quantize model\.layers\.0\.q_proj\.weight: "):
        QuantLinear.from_linear(linear, QUANTIZERS.get("nf4")().build(), name="model.layers.0.q_proj")
