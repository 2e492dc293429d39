"""adapters.base on the tiny Llama: every adapter on every quantizer and base layer kind it accepts trains only itself,
leaves the quantized storage alone, merges, unmerges exactly, and saves and loads; incompatible pairs are refused
from the configs alone; adapters saved from a quantized base load with plain PEFT, and PEFT's own merge works on the
harness' QuantLinear. (QA-LoRA's merge: test_qalora.py; AdaLoRA's budget: test_adalora.py; LoftQ: test_loftq.py.)
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from adapters import base as adapters
from adapters.base import IncompatibleError
from harness.models.quantize import target_layers
from harness.models.sources import load_model
from harness.registry import ADAPTERS
from quantizers import layers as base_layer
from quantizers.linear import QuantizedWeight, QuantLinear
from tests.adapters.conftest import (
    ADAPTER_NAMES,
    BNB_KIND,
    MARKERS,
    MODEL,
    QUANTIZERS,
    RANK,
    STEPS,
    accepts,
    adapter,
    attached,
    base_model,
    batch,
    cells,
    eval_loss,
    logits,
    qconfig,
    same_storage,
    storage,
    train,
)

pytestmark = [
    # bitsandbytes' int8 matmul on the CPU notes, on every call, that it casts fp32 inputs to fp16
    pytest.mark.filterwarnings("ignore:MatMul8bitLt"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

# ---------------------------------------------------------------- the matrix


def test_the_matrix_covers_what_each_adapter_accepts():
    ids = {p.id for p in cells()}
    # 4 adapters x 12 quantizers + qalora x 6 in intk's format (intk x 3, gptq, awq, hqq); bnb4 x 3 x 2 + bnb8 x 4;
    # 2 dense
    assert len(ids) == 66
    assert "qalora-nf4-harness" not in ids and "loha-nf4-bnb4" not in ids and "lokr-fp4-bnb4" not in ids
    assert {"loha-int8-bnb8", "lokr-int8-bnb8", "adalora-nf4_dq-bnb4", "qalora-int2_g32-harness"} <= ids
    assert {f"{a}-{q}-harness" for a in ADAPTER_NAMES for q in ("gptq3_g32", "awq3_g32", "hqq3_g32")} <= ids
    # and each adapter's own check (from the configs alone) agrees, pair by pair
    for name in ADAPTER_NAMES:
        for q in QUANTIZERS:
            for kind in ("harness", BNB_KIND.get(q)):
                if kind is None:
                    continue
                cfg = ADAPTERS.get(name)(rank=RANK, targets=["all-linear"])
                if accepts(name, q, kind):
                    cfg.check_base(qconfig(q), kind)
                else:
                    with pytest.raises(IncompatibleError):
                        cfg.check_base(qconfig(q), kind)


# PEFT warns when it saves a zero-rank layer (AdaLoRA's budget may leave a layer none) as if it were an
# ungathered FSDP shard; here the zero rank is real
@pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape")
@pytest.mark.parametrize("name, quantizer, module, kind", cells())
def test_train_merge_unmerge_save_load(name, quantizer, module, kind, tmp_path):
    model, cfg, base = attached(name, quantizer, module, kind)
    layers = adapters.tuner_layers(model)
    assert len(layers) == len(target_layers(load_model(MODEL)[0]))  # every linear layer but the head
    assert all(base_layer.layer_kind(layer.get_base_layer()) == kind for _, layer in layers)

    # only the adapter trains
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == {n for n in params if MARKERS[name] in n}
    frozen = {n: p.detach().clone() for n, p in params.items() if n not in trainable}
    adapter_before = {n: params[n].detach().clone() for n in trainable}
    stored_before = storage(model)

    ids = batch()
    loss_before = eval_loss(model, ids)
    train(model, cfg, ids)
    assert eval_loss(model, ids) < loss_before
    assert any(not torch.equal(params[n], adapter_before[n]) for n in trainable)
    for n, value in frozen.items():
        assert torch.equal(params[n].detach(), value), n
    after = storage(model)
    assert after.keys() == stored_before.keys()
    for layer_name in after:
        assert same_storage(after[layer_name], stored_before[layer_name]), layer_name

    # merge re-quantizes W + delta into the base layers; unmerge gives back the exact storage and logits
    unmerged = logits(model, ids)
    expected = expected_merge(model, name, kind)
    assert adapters.merge(model, cfg) == len(layers)
    merged = storage(model)
    assert any(not same_storage(merged[n], stored_before[n]) for n in merged)
    live = {n: base_layer.stored_tensors(layer.get_base_layer()) for n, layer in layers}
    assert not any(t.requires_grad for tensors in live.values() for t in tensors.values())  # plain storage
    for layer_name, tensors in expected.items():
        assert same_storage(merged[layer_name], tensors), layer_name
    # merged, the model runs its base layers alone: exactly what a plain copy holding the merged storage gives
    reference = base_model(quantizer, module)
    for layer_name, layer in layers:
        base_layer.restore(reference.get_submodule(layer_name.removeprefix("base_model.model.")),
                           copy.deepcopy(base_layer.snapshot(layer.get_base_layer())))
    assert torch.equal(logits(model, ids), logits(reference, ids))
    assert adapters.unmerge(model) == len(layers)
    restored = storage(model)
    for layer_name in restored:
        assert same_storage(restored[layer_name], stored_before[layer_name]), layer_name
    assert torch.equal(logits(model, ids), unmerged)

    # save, then load onto a freshly quantized copy of the same model
    adapters.save(model, tmp_path, cfg)
    assert {"adapter_config.json", "adapter_model.safetensors", "harness_adapter.json"} <= {
        p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "harness_adapter.json").read_text())["name"] == name
    torch.manual_seed(1)  # a different initialisation, all of it overwritten by the load
    loaded = adapters.load(base_model(quantizer, module), tmp_path, cfg, base)
    assert torch.equal(logits(loaded, ids), unmerged)


def expected_merge(model, name: str, kind: str) -> dict[str, dict[str, torch.Tensor]]:
    """What merging must store in each layer where the delta is PEFT's get_delta_weight: the layer's own
    quantizer applied to dequantize(W) + delta (harness), or W + delta (dense). QA-LoRA folds into zero points
    instead (tested below); bitsandbytes layers re-quantize through bitsandbytes (checked as 'changed')."""
    if name == "qalora" or kind not in ("harness", "dense"):
        return {}
    out = {}
    for layer_name, layer in adapters.tuner_layers(model):
        base = layer.get_base_layer()
        dense = base_layer.dequantized_weight(base) + layer.get_delta_weight(layer.active_adapters[0]).float()
        if kind == "harness":
            tensors = base.weight.quantizer.quantize(dense, name="expected").tensors()
        else:
            tensors = {"weight": dense}
        out[layer_name.removeprefix("base_model.model.")] = tensors
    return out


# ---------------------------------------------------------------- refused before any work


@pytest.mark.parametrize("name, quantizer, kind, named", [
    ("qalora", "nf4", "harness", ["'nf4'", "intk", "bits 2, 3, 4 or 8", "module=harness"]),
    ("qalora", "nf4", "bnb4", ["'nf4'", "intk", "module=harness"]),
    ("qalora", "int4_g32", "bnb4", ["bnb4", "['harness']"]),
    ("loha", "nf4", "bnb4", ["loha", "bnb4", "['harness', 'bnb8', 'dense']", "module=harness"]),
    ("lokr", "fp4", "bnb4", ["lokr", "bnb4", "['harness', 'bnb8', 'dense']", "module=harness"]),
])
def test_incompatible_pairs_are_refused_from_the_configs_naming_what_is_accepted(name, quantizer, kind, named):
    cfg = ADAPTERS.get(name)(rank=RANK, targets=["all-linear"])
    with pytest.raises(IncompatibleError) as err:  # configs only: no model exists yet
        cfg.check_base(qconfig(quantizer), kind)
    for text in named:
        assert text in str(err.value)


def test_incompatible_error_is_a_value_error():
    assert issubclass(IncompatibleError, ValueError)  # what the CLI turns into a one-line message


# ---------------------------------------------------------------- interoperability with plain PEFT


@pytest.mark.parametrize("module, kind", [("harness", "harness"), ("bitsandbytes", "bnb4")])
def test_lora_trained_on_a_4bit_base_loads_with_plain_peft_onto_the_full_precision_model(module, kind, tmp_path):
    from peft import PeftModel

    model, cfg, _ = attached("lora", "nf4", module, kind)
    train(model, cfg, batch())
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert trained and all(t.abs().max() > 0 for n, t in trained.items() if "lora_B" in n)  # B trained off 0
    adapters.save(model, tmp_path, cfg)

    full_precision, _ = load_model(MODEL)
    loaded = PeftModel.from_pretrained(full_precision, tmp_path)
    layers = adapters.tuner_layers(loaded)
    assert len(layers) == len(trained) // 2
    assert all(type(layer.get_base_layer()) is torch.nn.Linear for _, layer in layers)  # dense fp32 weights
    found = {n: p.detach() for n, p in loaded.named_parameters() if "lora_" in n}
    assert found.keys() == trained.keys()
    for name, tensor in trained.items():
        assert found[name].dtype == tensor.dtype and torch.equal(found[name], tensor), name


@pytest.mark.parametrize("quantizer", ["nf4_dq", "int8", "int3_g32"])
@pytest.mark.parametrize("safe_merge", [False, True])
def test_peft_merge_and_unload_re_quantizes_as_our_merge(quantizer, safe_merge):
    """PEFT merges with `weight.data += delta` (or, with safe_merge, clone, add and assign `.data`); the
    QuantizedWeight re-quantizes on +=, so PEFT's merge stores exactly what adapters.base.merge stores."""
    ours, cfg, _ = attached("lora", quantizer, "harness", "harness")
    theirs, _, _ = attached("lora", quantizer, "harness", "harness")
    ids = batch()
    train(ours, cfg, ids)
    train(theirs, cfg, ids)  # the same seed, data and steps: the same adapter, bit for bit
    unmerged = logits(ours, ids)
    assert torch.equal(logits(theirs, ids), unmerged)
    before = storage(ours)

    adapters.merge(ours, cfg)
    plain = theirs.merge_and_unload(safe_merge=safe_merge)
    assert not adapters.tuner_layers(plain)
    quant_layers = {n: m for n, m in plain.named_modules() if isinstance(m, QuantLinear)}
    assert quant_layers.keys() == {n.removeprefix("base_model.model.") for n, _ in adapters.tuner_layers(ours)}
    merged = storage(ours)
    for name, layer in quant_layers.items():
        assert isinstance(layer.weight, QuantizedWeight) and not layer.weight.requires_grad
        assert same_storage(base_layer.stored_tensors(layer), merged[name]), name
    assert any(not same_storage(merged[n], before[n]) for n in merged)
    assert torch.equal(logits(plain, ids), logits(ours, ids))


def test_a_deep_copied_quantized_model_trains_independently():
    """deepcopy of a quantized model (what a caller may do to keep a base) copies the codes: training and
    merging an adapter on the copy leaves the original's storage alone."""
    model = base_model("nf4", "harness")
    original = {n: {k: v.clone() for k, v in m.quantized.tensors().items()}
                for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    twin = copy.deepcopy(model)
    cfg = adapter("lora")
    peft_model = adapters.attach(twin, cfg, total_steps=STEPS, base=cfg.check_base(qconfig("nf4"), "harness"))
    train(peft_model, cfg, batch())
    adapters.merge(peft_model, cfg)
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            assert same_storage(m.quantized.tensors(), original[name]), name
