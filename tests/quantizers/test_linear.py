"""QuantLinear: y = x W^T + b over the dequantized weight, gradients for the input only, exact storage; its
QuantizedWeight: aliases share one storage, += / -= / copy_ re-quantize in place, other in-place ops raise;
PEFT's tuners attach to it as to any nn.Linear."""

import copy

import pytest
import torch

from harness.registry import QUANTIZERS
from quantizers.linear import QuantizedWeight, QuantLinear

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
    assert torch.equal(w, layer.quantized.dequantize(dtype))
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
    # exactly one weight (the QuantizedWeight) and the bias, both frozen: nothing an optimizer could update
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert isinstance(layer.weight, QuantizedWeight) and isinstance(layer.weight, torch.nn.Parameter)
    assert all(not p.requires_grad and p.grad is None for p in layer.parameters())
    assert list(layer.buffers()) == []


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
def test_state_dict_holds_exactly_the_quantized_bytes(case, bias):
    layer = make_layer(case, "bfloat16", bias=bias)
    bias_bytes = OUT * 2 if bias else 0  # the bias is kept in the compute dtype, bf16
    expected = layer.quantized.nbytes + bias_bytes
    state = layer.state_dict()
    assert sum(t.numel() * t.element_size() for t in state.values()) == expected
    assert set(state) == {f"weight.{k}" for k in layer.quantized.tensors()} | ({"bias"} if bias else set())
    assert layer.weight.nbytes_quantized == layer.quantized.nbytes
    # the packed codes, not a dense (OUT, IN) weight: 4-bit codes are IN * OUT / 2 bytes, int8 IN * OUT
    assert state["weight.qdata"].numel() * state["weight.qdata"].element_size() < OUT * IN * 2


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
    assert layer.compute_dtype == layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer(x), before)


def test_device_moves_apply():
    layer = make_layer("nf4_dq_bnb", "bfloat16")
    assert all(t.device.type == "cpu" for t in layer.to("cpu").state_dict().values())
    meta = make_layer("int8_outliers", "bfloat16").to("meta")  # a device that exists everywhere
    assert all(t.device.type == "meta" for t in meta.state_dict().values())
    assert all(t.device.type == "meta" for t in meta.quantized.tensors().values())
    assert meta.weight.device.type == "meta" and meta.quantized.qdata.device.type == "meta"
    assert isinstance(meta.weight, QuantizedWeight) and not meta.weight.requires_grad


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
    quantizer = QUANTIZERS.get("nf4")(backend="reference", compute_dtype="float32").build()
    qt = quantizer.quantize(torch.randn(4, 8, 8), name="w")
    with pytest.raises(ValueError, match=r"must be 2-D, got shape \(4, 8, 8\)"):
        QuantLinear(QuantizedWeight.build(qt, quantizer, torch.float32))


def test_from_linear_rejects_nan_naming_the_weight():
    linear = torch.nn.Linear(IN, OUT)
    with torch.no_grad():
        linear.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"cannot quantize model\.layers\.0\.q_proj\.weight: "):
        QuantLinear.from_linear(linear, QUANTIZERS.get("nf4")().build(), name="model.layers.0.q_proj")


# ---------------------------------------------------------------- the QuantizedWeight as a tensor


def stored(weight: QuantizedWeight) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in weight.quantized.tensors().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, tensor in a.items():
        assert tensor.dtype == b[key].dtype and torch.equal(tensor, b[key]), key


def delta(seed: int = 3) -> torch.Tensor:
    # the size of the weights themselves (nn.Linear's init is U(-1/sqrt(IN), 1/sqrt(IN))), so that
    # re-quantizing lands on other codes
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed)) / IN**0.5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("op", ["add", "sub"])
def test_in_place_add_and_sub_equal_quantizing_the_dense_result(case, op):
    layer = make_layer(case, "float32")
    d = delta()
    dense = layer.quantized.dequantize(torch.float32)
    expected = layer.weight.quantizer.quantize(dense + d if op == "add" else dense - d, name="expected")
    with torch.no_grad():
        if op == "add":
            layer.weight += d
        else:
            layer.weight -= d
    assert isinstance(layer.weight, QuantizedWeight) and isinstance(layer.weight, torch.nn.Parameter)
    assert not layer.weight.requires_grad
    # bit-identical: the same quantizer on the same fp32 values
    assert_same_tensors(stored(layer.weight), expected.tensors())
    assert layer.quantized.format == expected.format


@pytest.mark.parametrize("alias", ["data", "detach"])
def test_aliases_share_the_storage_so_in_place_updates_through_them_are_seen(alias):
    layer = make_layer("nf4", "float32")
    view = layer.weight.data if alias == "data" else layer.weight.detach()
    assert isinstance(view, QuantizedWeight) and view is not layer.weight
    assert view.quantized is layer.quantized  # one storage box, not a copy
    before = stored(layer.weight)
    view += delta()
    assert view.quantized is layer.quantized
    assert not torch.equal(layer.quantized.qdata, before["qdata"])  # the parameter sees the new codes
    x = torch.randn(BATCH, IN)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, view.dequantize(), layer.bias))


def test_assigning_data_rebinds_the_storage_as_for_any_tensor():
    """`param.data = other` (PEFT's safe_merge: clone, add, assign back) must reach the parameter."""
    layer = make_layer("int4", "float32")
    merged = layer.weight.data.clone()
    assert merged.quantized is not layer.quantized
    merged += delta()
    layer.weight.data = merged
    assert layer.quantized is merged.quantized
    assert isinstance(layer.weight, torch.nn.Parameter) and not layer.weight.requires_grad
    dense = delta(seed=4)
    layer.weight.data = dense  # a dense tensor is quantized into place, as copy_ does
    assert_same_tensors(stored(layer.weight), layer.weight.quantizer.quantize(dense, name="expected").tensors())
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        layer.weight.data = torch.zeros(3, 4)


@pytest.mark.parametrize("case", ["nf4_dq_bnb", "int8_outliers", "int3_g64"])
def test_copy_from_a_dense_tensor_quantizes_it(case):
    layer = make_layer(case, "float32")
    dense = delta(seed=5)
    with torch.no_grad():
        layer.weight.copy_(dense)
    assert_same_tensors(stored(layer.weight), layer.weight.quantizer.quantize(dense, name="expected").tensors())


def test_copy_from_another_quantized_weight_copies_its_codes():
    source, target = make_layer("nf4", "float32", seed=1), make_layer("nf4", "float32", seed=2)
    with torch.no_grad():
        target.weight.copy_(source.weight)
    assert_same_tensors(stored(target.weight), stored(source.weight))
    for key, tensor in target.quantized.tensors().items():  # copied, not shared
        assert tensor.data_ptr() != source.quantized.tensors()[key].data_ptr()


@pytest.mark.parametrize("case", ["nf4_dq_bnb", "int3_g64"])
def test_deepcopy_gives_an_independent_storage(case):
    layer = make_layer(case, "float32")
    twin = copy.deepcopy(layer)
    assert isinstance(twin.weight, QuantizedWeight) and isinstance(twin.weight, torch.nn.Parameter)
    assert not twin.weight.requires_grad and twin.weight.quantizer is not None
    assert_same_tensors(stored(twin.weight), stored(layer.weight))
    for key, tensor in twin.quantized.tensors().items():
        assert tensor.data_ptr() != layer.quantized.tensors()[key].data_ptr(), key
    before = stored(layer.weight)
    with torch.no_grad():
        twin.weight += delta()
    assert_same_tensors(stored(layer.weight), before)  # the original did not move
    assert not torch.equal(twin.quantized.qdata, before["qdata"])


@pytest.mark.parametrize("op, call", [
    ("mul_", lambda w: w.mul_(2.0)),
    ("zero_", lambda w: w.zero_()),
    ("clamp_", lambda w: w.clamp_(-1, 1)),
])
def test_unsupported_in_place_ops_raise_naming_the_op(op, call):
    layer = make_layer("nf4", "float32")
    before = stored(layer.weight)
    with torch.no_grad(), pytest.raises(NotImplementedError, match=rf"in-place op aten\.{op}"):
        call(layer.weight)
    assert_same_tensors(stored(layer.weight), before)


def test_out_of_place_ops_see_the_dense_weight():
    layer = make_layer("int3_g64", "float32")
    dense = layer.dequantized_weight()
    assert torch.equal(layer.weight * 2, dense * 2)
    assert torch.equal(layer.weight.sum(0), dense.sum(0))
    assert torch.allclose(layer.weight, dense, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_backward_under_bf16_autocast_gives_the_input_gradient_in_its_dtype(case):
    """A fp32-compute layer under autocast(bf16) computes in bf16, as F.linear would; x.grad stays fp32."""
    layer = make_layer(case, "float32")
    x = torch.randn(BATCH, IN, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16  # autocast's dtype, like F.linear's output under autocast
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    assert x.grad.dtype == x.dtype == torch.float32
    w = layer.quantized.dequantize(torch.bfloat16)  # what the backward multiplies by: autocast's dtype
    exact = grad_out.double() @ w.double()
    # backward: bf16 (BATCH, OUT) @ bf16 (OUT, IN), fp32 accumulation, one rounding to bf16, then an exact
    # cast to fp32: the forward's bound with K = out_features at bf16's eps
    assert ((x.grad.double() - exact).abs() <= matmul_tolerance(grad_out, w, torch.bfloat16)).all()
    assert layer.weight.grad is None and layer.bias.grad is None


# ---------------------------------------------------------------- PEFT on a QuantLinear


class OneLayer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def peft_configs():
    import peft

    return {
        "lora": (peft.LoraConfig(r=4, target_modules=["proj"], init_lora_weights="gaussian"), "lora_"),
        "loha": (peft.LoHaConfig(r=4, target_modules=["proj"]), "hada_"),
        "lokr": (peft.LoKrConfig(r=4, target_modules=["proj"]), "lokr_"),
        "adalora": (peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["proj"]), "lora_"),
    }


@pytest.mark.parametrize("tuner", ["lora", "loha", "lokr", "adalora"])
@pytest.mark.parametrize("case", ["nf4_dq_bnb", "int3_g64"])
def test_peft_tuners_attach_to_a_quant_linear_and_train_only_the_adapter(tuner, case):
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = make_layer(case, "float32")
    before = stored(layer.weight)
    config, marker = peft_configs()[tuner]
    model = get_peft_model(OneLayer(layer), config)
    tuned = model.base_model.model.proj
    assert isinstance(tuned, BaseTunerLayer) and tuned.get_base_layer() is layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(marker in n for n in trainable)
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    x = torch.randn(BATCH, IN, requires_grad=True)
    model(x).square().sum().backward()
    assert x.grad is not None and layer.weight.grad is None and layer.bias.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)
    assert_same_tensors(stored(layer.weight), before)
