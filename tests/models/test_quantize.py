"""harness.models.quantize: which layers are replaced, by which module, that the quantized model computes with the
quantizer's weights, what it refuses, and its storage and weight-SQNR report."""

import copy
import math

import pytest
import torch
from torch import nn

from harness.models.quantize import quantize_model, target_layers
from quantizers.linear import QuantLinear
from quantizers.storage import model_storage_bytes, module_tensors, tensor_bytes
from tests.models.conftest import TEXT, logits, quantizer, tiny

# ---------------------------------------------------------------- which layers are replaced


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("module", ["harness", "bitsandbytes"])
def test_quantize_model_replaces_exactly_the_target_layers(arch, module):
    model, _ = tiny(arch)
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    embeddings = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    report = quantize_model(model, quantizer("nf4"), module=module)
    assert set(report.replaced) == linears - {"lm_head"}
    expected = QuantLinear if module == "harness" else __import__("bitsandbytes").nn.Linear4bit
    for name in report.replaced:
        assert type(model.get_submodule(name)) is expected
    assert type(model.lm_head) is nn.Linear
    for name, weight in embeddings.items():  # kept, and bit-identical: compute dtype float32 is no cast
        assert isinstance(model.get_submodule(name), nn.Embedding)
        assert torch.equal(model.get_submodule(name).weight, weight)
    if arch == "opt":  # OPT ties lm_head to the token embeddings; the tie must survive
        assert model.lm_head.weight is model.model.decoder.embed_tokens.weight


def test_target_and_skip_patterns_glob_and_regex():
    model, _ = tiny("llama")
    q_v = target_layers(model, targets=("q_proj", "re:mlp\\.(up|down)_proj$"))
    wanted = ("q_proj", "mlp.up_proj", "mlp.down_proj")
    assert q_v == [n for n, _ in model.named_modules() if n.endswith(wanted)]
    assert target_layers(model, targets=("model.layers.1.*",), skip=("*_proj",)) == []
    everything = target_layers(model, skip=())
    assert "lm_head" in everything and len(everything) == 7 * 2 + 1  # 7 projections per layer, 2 layers, head
    with pytest.raises(ValueError, match="no nn.Linear layer matches"):
        quantize_model(model, quantizer("nf4"), targets=("nothing_here",))


def test_module_choice_and_its_errors():
    model, _ = tiny("llama")
    assert quantize_model(copy.deepcopy(model), quantizer("int4")).module == "harness"  # no bnb int4 layer
    assert quantize_model(copy.deepcopy(model), quantizer("nf4")).module == "bitsandbytes"
    assert quantize_model(copy.deepcopy(model), quantizer("nf4", backend="reference")).module == "harness"
    assert quantize_model(copy.deepcopy(model), quantizer("int8")).module == "bitsandbytes"
    with pytest.raises(ValueError, match="module=bitsandbytes cannot run quantizer 'int8'"):
        quantize_model(copy.deepcopy(model), quantizer("int8", outlier_threshold=6.0), module="bitsandbytes")
    with pytest.raises(ValueError, match=r"module='gpu' is not accepted; use one of \['auto', 'harness'"):
        quantize_model(copy.deepcopy(model), quantizer("nf4"), module="gpu")


# ---------------------------------------------------------------- outputs


def fake_quantized(model, config):
    """A copy whose target layers stay nn.Linear but hold the quantizer's dequantized weight (fp32)."""
    fake = copy.deepcopy(model)
    q = config.build()
    for name in target_layers(fake):
        layer = fake.get_submodule(name)
        layer.weight.data = q.quantize(layer.weight.data, name=name).dequantize(torch.float32)
    return fake


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("module, qname, fields", [
    ("harness", "nf4", dict(double_quant=True)),
    ("bitsandbytes", "nf4", dict(double_quant=True)),
    ("bitsandbytes", "fp4", {}),
    ("harness", "int4", {}),
    ("harness", "int8", {}),
])
def test_quantized_model_computes_with_the_quantizers_weights(arch, module, qname, fields):
    """The format's error is the only difference from the float model: a float model holding the quantizer's
    dequantized weights gives the same logits. Tolerance: both run in float32 with the same weights and
    differ only in summation order, ~1e-7 relative per matmul; 1e-4 of the logit scale leaves 1000x room."""
    model, tok = tiny(arch)
    ids = tok(TEXT, return_tensors="pt").input_ids
    config = quantizer(qname, **fields)
    expected = logits(fake_quantized(model, config), ids)
    quantize_model(model, config, module=module)
    got = logits(model, ids)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    # and quantization did change something: 4-bit weights move logits far more than float rounding does
    assert (logits(tiny(arch)[0], ids) - expected).abs().max() > 1e-3 * scale


def test_bnb_int8_layer_error_is_within_its_activation_rounding_bound():
    """Linear8bitLt in eval mode also rounds the input rows to int8 (LLM.int8), so it cannot match the fp32
    fake-quantized layer exactly. Each input row x is cast to fp16 (relative error <= 2^-11), scaled by
    s = absmax(x)/127 and rounded (error <= s/2), so |y - x W^T| <= sum_k |W[n,k]| (s/2 + 2^-11 |x_k|),
    plus the fp16 rounding of the output (<= 2^-11 |y|). W is the dequantized weight, exact in both."""
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    model = nn.Sequential(linear)
    config = quantizer("int8")
    w = config.build().quantize(linear.weight.detach()).dequantize(torch.float32)
    quantize_model(model, config, module="bitsandbytes", skip=())
    model.eval()
    x = torch.randn(8, 256)
    with torch.no_grad():
        got = model(x).float()
    exact = x @ w.t() + linear.bias.detach()
    s = x.abs().amax(dim=1, keepdim=True) / 127
    bound = (s / 2 + 2**-11 * x.abs()) @ w.abs().t() + 2**-11 * exact.abs()
    assert ((got - exact).abs() <= bound * 1.01 + 1e-6).all()  # 1% and 1e-6: fp32 sums of the bound itself
    assert (got - exact).abs().max() > 0  # the activation rounding really happens (else the test is moot)


def test_linear4bit_holds_what_bitsandbytes_own_quantization_gives():
    """Reference: a Linear4bit quantized by bitsandbytes itself (Params4bit.to(device)), nf4 + DQ."""
    from bitsandbytes.nn import Linear4bit, Params4bit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128))
    weight = model[0].weight.detach().clone()
    quantize_model(model, quantizer("nf4", double_quant=True), module="bitsandbytes", skip=())
    ref = Linear4bit(256, 128, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
    ref.weight = Params4bit(weight, requires_grad=False, blocksize=64, compress_statistics=True,
                            quant_type="nf4")
    ref = ref.to("cpu")
    ours, theirs = model[0].weight, ref.weight
    assert torch.equal(ours.data, theirs.data)
    a, b = ours.quant_state, theirs.quant_state
    for x, y in [(a.absmax, b.absmax), (a.code, b.code), (a.offset, b.offset),
                 (a.state2.absmax, b.state2.absmax), (a.state2.code, b.state2.code)]:
        assert torch.equal(x, y)


def test_non_finite_weights_are_rejected_with_the_layer_name_and_the_model_left_intact():
    model, _ = tiny("llama")
    model.model.layers[1].mlp.up_proj.weight.data[0, 0] = float("nan")
    for module in ("harness", "bitsandbytes"):
        with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
            quantize_model(model, quantizer("nf4"), module=module)
        assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))


# ---------------------------------------------------------------- storage and weight error


@pytest.mark.parametrize("module", ["harness", "bitsandbytes"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_storage_report_matches_the_tensors_and_the_format(module, double_quant):
    model, _ = tiny("llama")
    before = model_storage_bytes(model)
    config = quantizer("nf4", double_quant=double_quant, compute_dtype="bfloat16")
    report = quantize_model(model, config, module=module)
    assert report.bytes_before == before and report.bytes_after == model_storage_bytes(model)
    # every float parameter left is in the compute dtype, and the quantized layers hold only codes + constants
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    replaced = [model.get_submodule(n) for n in report.replaced]
    rest = [t for m in model.modules() if not any(m is r for r in replaced) for t in module_tensors(m)]
    assert report.bytes_after == tensor_bytes(rest + [t for r in replaced for t in module_tensors(r)])
    # the format, from first principles: 4 bits per weight, plus per 64-weight block an fp32 absmax, or with
    # double quantization an 8-bit code plus, per 256 blocks, an fp32 second-level absmax; plus code tables
    # and the scalar offset, which do not grow with the layer
    for layer in report.layers:
        n = layer.params
        blocks = -(-n // 64)
        scale_bytes = blocks + 4 * -(-blocks // 256) + 4 if double_quant else 4 * blocks
        tables = 16 * 4 + (256 * 4 if double_quant else 0)  # fp32: 16 nf4 levels (+ 256-entry dynamic map)
        assert layer.bits_per_param == (n // 2 + scale_bytes + tables) * 8 / n
    # the whole model: the targets' fp32 weights leave, their quantized storage arrives, the other parameters
    # halve (fp32 -> bf16) and the buffers (rotary tables) stay as they were
    buffers = sum(b.numel() * b.element_size() for m in model.modules() if not any(m is r for r in replaced)
                  for b in m.buffers(recurse=False))
    rest_before = before - sum(layer.bytes_before for layer in report.layers)
    quantized = tensor_bytes(t for r in replaced for t in module_tensors(r))
    assert report.bytes_after == (rest_before - buffers) // 2 + buffers + quantized
    assert quantized <= sum(layer.bytes_after for layer in report.layers)  # shared code tables count once


def test_weight_sqnr_is_pooled_over_the_layers_and_agrees_across_backends():
    from quantizers.layers import dequantized_weight

    model, _ = tiny("llama")
    weights = {n: m.weight.detach().double().clone() for n, m in model.named_modules() if n.endswith("_proj")}
    reports, models = {}, {}
    for label, name, module in [("harness", "nf4", "harness"), ("bnb", "nf4", "bitsandbytes"),
                                ("int8", "int8", "harness")]:
        models[label] = copy.deepcopy(model)
        reports[label] = quantize_model(models[label], quantizer(name), module=module)
    # pooled, not averaged over layers: 10 log10(sum of w^2 / sum of errors^2) over all quantized weights, by
    # hand from the original weights and each quantized layer's dequantized weight
    report = reports["harness"]
    signal = sum(float(weights[layer.name].square().sum()) for layer in report.layers)
    error = sum(float((weights[layer.name] - dequantized_weight(models["harness"].get_submodule(layer.name),
                                                                torch.float64)).square().sum())
                for layer in report.layers)
    # the same float64 sums in the same order
    assert report.weight_sqnr_db == pytest.approx(10 * math.log10(signal / error), rel=1e-12)
    # harness and bitsandbytes NF4 store the same codes and absmax (tested bit-exact elsewhere): the same error
    # up to the float64 summation order
    assert reports["harness"].weight_sqnr_db == pytest.approx(reports["bnb"].weight_sqnr_db, rel=1e-9)
    # four more bits are worth ~6 dB each; int8's per-row absmax vs nf4's 64-blocks still leaves > 15 dB
    assert reports["int8"].weight_sqnr_db > reports["harness"].weight_sqnr_db + 15


@pytest.mark.parametrize("name", ["intk", "gptq", "awq", "hqq"])
def test_a_group_size_that_does_not_divide_a_layer_is_refused_before_any_work(name, monkeypatch):
    """The tiny Llama's linears read 64 (hidden) or its intermediate size: 128 divides no 64-wide layer. Refused
    naming a layer, its width and the group sizes that fit every layer, before a calibrated quantizer calibrates."""
    model, _ = tiny("llama")
    cfg = quantizer(name, bits=4, group_size=128)
    if getattr(cfg, "calibrated", False):
        monkeypatch.setattr(type(cfg), "calibrate", lambda *a, **k: pytest.fail("calibrated before the check"))
    widths = {m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    fits = [g for g in (32, 64) if all(w % g == 0 for w in widths)]
    with pytest.raises(ValueError, match=rf"{name}\.group_size=128 does not divide .* \(in_features=64\); group "
                                         rf"sizes that divide every target layer: \[{', '.join(map(str, fits))}\]"):
        quantize_model(model, cfg, module="harness", calibration=[torch.zeros(1, 8, dtype=torch.long)])
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("proj"))  # untouched
