"""The sensitivity command: its groups, that quantizing a group touches nothing else, the mixed-precision bits,
the command end to end on a tiny model, and one-line errors for bad knobs."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from harness.cli import register_configs
from harness.config import EXPERIMENTS_DIR, quantizer_config
from harness.models.quantize import target_layers
from harness.models.sources import ModelConfig, load_model
from harness.sensitivity.config import SensitivityConfig
from harness.sensitivity.groups import combined_bits, layer_groups, quantize_copy, quantize_mixed

pytestmark = pytest.mark.filterwarnings("ignore:MatMul8bitLt")


def compose_sensitivity(overrides):
    register_configs()
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        return compose("sensitivity", overrides=overrides)


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


def markdown_tables(text: str) -> dict[str, pd.DataFrame]:
    """'## title' -> the Markdown table under it."""
    out = {}
    for section in text.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        lines = [ln for ln in body.splitlines() if ln.startswith("|") and not re.match(r"^\|[-:| ]+\|$", ln)]
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
        out[title] = pd.DataFrame(rows[1:], columns=rows[0])
    return out


def test_command_writes_every_output_with_ranked_tables(tmp_path):
    from harness.sensitivity.run import run

    cfg = compose_sensitivity(["model=tiny-llama", "max_tokens=256", "context_length=64", "compute_dtype=float32",
                               "granularity=layer", "top_k=[1,2]", "mixed_by=[block,layer]", f"output_dir={tmp_path}"])
    out = run(cfg)
    for name in ("sensitivity.csv", "sensitivity.md", "mixed_precision.csv", "heatmap.png", "heatmap.pdf",
                 "run.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = pd.read_csv(tmp_path / "sensitivity.csv")
    assert table.kind.value_counts().to_dict() == {"layer": 14, "projection": 7, "block": 2}
    assert (table.status == "ok").all() and (table.tokens == 256).all()
    # both sides are the same two floats subtracted (read back from CSV's round-tripping repr)
    assert (table.increase == table.perplexity - table.reference_perplexity).all()
    tables = markdown_tables((tmp_path / "sensitivity.md").read_text())
    ranked = [t for title, t in tables.items() if title.startswith("Per ")]
    assert len(ranked) == 3
    for t in ranked:
        increase = t["increase"].astype(float)
        assert increase.is_monotonic_decreasing and list(t["rank"].astype(int)) == list(range(1, len(t) + 1))
    assert "tiny-llama" in (tmp_path / "sensitivity.md").read_text().split("\n## ")[0]

    mixed = pd.read_csv(tmp_path / "mixed_precision.csv").fillna({"kind": ""})
    assert set(mixed.split) == {"validation", "test"}
    val = mixed[mixed.split == "validation"].set_index("configuration")
    assert val.loc["full precision", "increase"] == 0 and val.loc["full precision", "bits_per_param"] == 32
    low, high = val.loc["uniform nf4", "bits_per_param"], val.loc["uniform int8", "bits_per_param"]
    plans = val[val.kind != ""]
    assert set(plans.kind) == {"block", "layer"} and set(plans.k) == {1, 2}
    assert ((plans.bits_per_param > low) & (plans.bits_per_param <= high)).all()
    top_layer = table[table.kind == "layer"].sort_values("increase").group.iloc[-1]
    assert val.loc["most sensitive 1 layer at 8 bits", "groups_8bit"] == top_layer
    # the control keeps as many bits: the two blocks have the same shapes, so the same products are summed in the
    # same order (approx only in case a future report orders its layers differently: ~1e-16 relative)
    assert val.loc["least sensitive 1 block at 8 bits", "bits_per_param"] == pytest.approx(
        val.loc["most sensitive 1 block at 8 bits", "bits_per_param"], rel=1e-12)
    assert "least sensitive 2 blocks at 8 bits" not in val.index  # k = every block: that is uniform int8
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"] == "sensitivity" and record["resolved"]["compute_dtype"] == "float32"
    assert set(out) == {"sensitivity", "mixed_precision"}


def test_shipped_config_composes_with_the_default_knobs():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose_sensitivity([]))
    assert isinstance(cfg, SensitivityConfig)
    assert cfg.granularity == "coarse" and cfg.top_k == [1, 2, 4] and cfg.quantizer.name == "nf4"
    assert cfg.keep_8bit.name == "int8" and cfg.output_dir == "results/sensitivity/smollm2-135m"


@pytest.mark.parametrize("override,fragment", [
    ("top_k=[0,2]", "sensitivity.top_k=[0, 2] must be a non-empty list of integers >= 1"),
    ("top_k=[]", "sensitivity.top_k=[] must be"),
    ("granularity=blocks", "sensitivity.granularity='blocks' is not accepted; use coarse"),
    ("mixed_by=[layer]", "layer needs granularity=layer"),
    ("heldout_split=validation", "sensitivity.heldout_split='validation' is the split"),
    ("keep_8bit.compute_dtype=float16", "keep_8bit.compute_dtype (float16) differ"),
    ("context_length=4096", "sensitivity.context_length=4096 is above the maximum positions"),
])
def test_bad_knobs_are_one_line_user_errors(override, fragment):
    from harness.cli.sensitivity import check
    from harness.user_error import UserError

    with pytest.raises(UserError, match=re.escape(fragment)):
        check(compose_sensitivity(["model=tiny-llama", "context_length=64", "compute_dtype=float32", override]))
