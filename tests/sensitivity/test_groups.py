"""harness.sensitivity.groups: every grouping covers every target layer once, quantizing a group touches nothing else,
and the mixed-precision bits are the weighted mean of the layers'."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.config import quantizer_config
from harness.models.quantize import target_layers
from harness.models.sources import ModelConfig, load_model
from harness.sensitivity.groups import combined_bits, layer_groups, quantize_copy, quantize_mixed

pytestmark = pytest.mark.filterwarnings("ignore:MatMul8bitLt")


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model(ModelConfig(name="tiny-llama", source="tiny", arch="llama"))
    return model, target_layers(model)


def nf4(dtype="float32"):
    return quantizer_config({"name": "nf4", "compute_dtype": dtype})


def int8(dtype="float32"):
    return quantizer_config({"name": "int8", "compute_dtype": dtype})


def test_every_grouping_covers_every_target_layer_exactly_once(tiny):
    _, layers = tiny
    groups = layer_groups(layers, "layer")
    counts = {kind: sum(g.kind == kind for g in groups) for kind in ("block", "projection", "layer")}
    assert counts == {"block": 2, "projection": 7, "layer": 14}
    for kind in counts:
        covered = [name for g in groups if g.kind == kind for name in g.layers]
        assert sorted(covered) == sorted(layers) and len(set(covered)) == len(covered)
    assert {g.name for g in groups if g.kind == "projection"} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # OPT's names (fc1/fc2, out_proj under model.decoder.layers.N) group the same way; coarse has no layer groups
    opt = [f"model.decoder.layers.{b}.{p}" for b in range(3) for p in ("self_attn.q_proj", "fc1", "fc2")]
    coarse = layer_groups(opt)
    assert [g.name for g in coarse] == ["block 0", "block 1", "block 2", "q_proj", "fc1", "fc2"]
    assert coarse[4].layers == tuple(f"model.decoder.layers.{b}.fc1" for b in range(3))


@pytest.mark.parametrize("group_name", ["block 1", "v_proj", "model.layers.0.mlp.down_proj"])
def test_quantizing_a_group_changes_only_that_group(tiny, group_name):
    model, layers = tiny
    group = next(g for g in layer_groups(layers, "layer") if g.name == group_name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized, report = quantize_copy(model, nf4(), group.layers)
    assert sorted(report.replaced) == sorted(group.layers)
    after = quantized.state_dict()
    for name in layers:
        assert (type(quantized.get_submodule(name)) is nn.Linear) == (name not in group.layers)
    untouched = [k for k in before if k.rsplit(".", 1)[0] not in group.layers]
    assert len(untouched) > len(before) // 2
    for key in untouched:  # bit-exact: float32 compute makes the cast of the other parameters a no-op
        assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key
    for key, value in model.state_dict().items():  # and the loaded model itself is left as it was
        assert torch.equal(value, before[key]), key


def dequantized(module):
    from quantizers.layers import dequantized_weight

    return dequantized_weight(module, torch.float64)


def test_mixed_precision_bits_are_the_weighted_mean_of_its_layers(tiny):
    model, layers = tiny
    keep = next(g for g in layer_groups(layers) if g.name == "block 1").layers
    rest = [n for n in layers if n not in keep]
    # bfloat16: quantizing the parts one after another on one copy would quantize the 4-bit part from weights
    # the 8-bit call had cast to bf16; every part must come from the loaded fp32 weights instead
    low, high = nf4("bfloat16"), int8("bfloat16")
    uniform_low, low_report = quantize_copy(model, low, layers)
    uniform_high, high_report = quantize_copy(model, high, layers)
    mixed, reports = quantize_mixed(model, [(high, keep), (low, rest)])
    bits = {r.name: r.bits_per_param for r in low_report.layers if r.name in rest}
    bits |= {r.name: r.bits_per_param for r in high_report.layers if r.name in keep}
    params = {n: model.get_submodule(n).weight.numel() for n in layers}
    expected = sum(bits[n] * params[n] for n in layers) / sum(params.values())
    assert low_report.bits_per_param < expected < high_report.bits_per_param
    # the same products summed in another order: only float rounding (~1e-16 relative) can differ
    assert combined_bits(reports) == pytest.approx(expected, rel=1e-12)
    for name in layers:
        twin = (uniform_high if name in keep else uniform_low).get_submodule(name)
        assert type(mixed.get_submodule(name)) is type(twin)
        assert torch.equal(dequantized(mixed.get_submodule(name)), dequantized(twin)), name
    assert mixed.model.norm.weight.dtype == torch.bfloat16  # the rest in the compute dtype, as quantize_model does
