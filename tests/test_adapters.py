"""Adapters on the tiny Llama: every adapter on every quantizer and base layer kind it accepts trains only itself,
leaves the quantized storage alone, merges, unmerges exactly, and saves and loads; incompatible pairs are refused
from the configs alone; QA-LoRA merges into the zero points exactly; AdaLoRA's budget falls to its target;
LoftQ starts closer to the full-precision weights than plain quantization; adapters saved from a quantized base
load with plain PEFT, and PEFT's own merge works on the harness' QuantLinear.

Everything runs on a 2-layer, hidden-64 random Llama with batches of 2 x 16 tokens (a few seconds per test).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from adapters import base as adapters
from adapters.base import IncompatibleError
from harness.config import quantizer_config
from harness.models.quantize import quantize_model, target_layers
from harness.models.sources import ModelConfig, load_model
from harness.registry import ADAPTERS
from quantizers import layers as base_layer
from quantizers.linear import QuantizedWeight, QuantLinear

pytestmark = [
    # bitsandbytes' int8 matmul on the CPU notes, on every call, that it casts fp32 inputs to fp16
    pytest.mark.filterwarnings("ignore:MatMul8bitLt"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

MODEL = ModelConfig(name="tiny-llama", source="tiny", arch="llama")
EPS32 = torch.finfo(torch.float32).eps
STEPS, LR, RANK = 3, 1e-2, 4
QUANTIZERS = {  # compute in fp32 everywhere: merge/unmerge identities are then about storage, not bf16 rounding
    "int8": {"name": "int8"},
    "int4": {"name": "int4"},
    "fp4": {"name": "fp4"},
    "fp4_e3m0": {"name": "fp4_e3m0"},
    "nf4": {"name": "nf4"},
    "nf4_dq": {"name": "nf4", "double_quant": True},
    "int2_g32": {"name": "intk", "bits": 2, "group_size": 32},
    "int3_g32": {"name": "intk", "bits": 3, "group_size": 32},
    "int4_g32": {"name": "intk", "bits": 4, "group_size": 32},
}
BNB_KIND = {"nf4": "bnb4", "fp4": "bnb4", "nf4_dq": "bnb4", "int8": "bnb8"}  # where bitsandbytes has the layer
MARKERS = {"lora": "lora_", "adalora": "lora_", "qalora": "lora_", "loha": "hada_", "lokr": "lokr_"}
ADAPTER_NAMES = ("lora", "loha", "lokr", "adalora", "qalora")


def qconfig(key: str | None):
    return None if key is None else quantizer_config({"compute_dtype": "float32", **QUANTIZERS[key]})


def adapter(name: str, **fields):
    defaults = {"rank": RANK, "alpha": 2.0 * RANK, "targets": ["all-linear"]}
    if name == "adalora":
        defaults["init_r"] = 6  # the budget falls from init_r towards `rank` over the steps
    return ADAPTERS.get(name)(**{**defaults, **fields})


def accepts(name: str, quantizer: str | None, kind: str) -> bool:
    cls = ADAPTERS.get(name)
    if name == "qalora":  # folds into zero points: the group-wise integer grid only
        return quantizer is not None and QUANTIZERS[quantizer]["name"] == "intk" and kind == "harness"
    return kind in cls.layer_kinds


def cells():
    out = []
    for name in ADAPTER_NAMES:
        for q in QUANTIZERS:
            for module, kind in (("harness", "harness"), ("bitsandbytes", BNB_KIND.get(q))):
                if kind is not None and accepts(name, q, kind):
                    out.append(pytest.param(name, q, module, kind, id=f"{name}-{q}-{kind}"))
    for name in ("lora", "loha"):  # a 16-bit (here fp32) base: plain nn.Linear layers
        out.append(pytest.param(name, None, None, "dense", id=f"{name}-none-dense"))
    return out


def base_model(quantizer: str | None, module: str | None):
    model, _ = load_model(MODEL)
    if quantizer is not None:
        quantize_model(model, qconfig(quantizer), module=module)
    return model


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 259, (2, 16), generator=torch.Generator().manual_seed(seed))


def train(model, cfg, ids: torch.Tensor, steps: int = STEPS) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    model.train()
    for step in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        cfg.on_step(model, step)  # AdaLoRA's budget: after the step, before zero_grad (as harness.training)
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def eval_loss(model, ids: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def storage(model) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the stored tensors (codes and constants; the dense weight for a dense base) of every layer
    an adapter sits on, by layer name."""
    return {name.removeprefix("base_model.model."): {k: v.detach().clone() for k, v in
                                                     base_layer.stored_tensors(layer.get_base_layer()).items()}
            for name, layer in adapters.tuner_layers(model)}


def same_storage(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def attached(name: str, quantizer: str | None, module: str | None, kind: str, total_steps: int = STEPS,
             **fields):
    cfg = adapter(name, **fields)
    base = cfg.check_base(qconfig(quantizer), kind)
    model = base_model(quantizer, module)
    torch.manual_seed(0)  # the adapter's initial weights
    return adapters.attach(model, cfg, total_steps=total_steps, base=base), cfg, base


# ---------------------------------------------------------------- the matrix


def test_the_matrix_covers_what_each_adapter_accepts():
    ids = {p.id for p in cells()}
    assert len(ids) == 51  # 4 adapters x 9 quantizers + qalora x 3 intk; bnb4 x 3 x 2 + bnb8 x 4; 2 dense
    assert "qalora-nf4-harness" not in ids and "loha-nf4-bnb4" not in ids and "lokr-fp4-bnb4" not in ids
    assert {"loha-int8-bnb8", "lokr-int8-bnb8", "adalora-nf4_dq-bnb4", "qalora-int2_g32-harness"} <= ids
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


def test_loftq_without_a_quantizer_is_refused():
    cfg = ADAPTERS.get("lora")(rank=RANK, targets=["all-linear"], init="loftq")
    with pytest.raises(IncompatibleError, match=r"init=loftq .* needs a quantizer.*use init=default"):
        cfg.check_base(None, "dense")
    assert ADAPTERS.get("lora")(rank=RANK, init="default").check_base(None, "dense") == {}


def test_incompatible_error_is_a_value_error():
    assert issubclass(IncompatibleError, ValueError)  # what the CLI turns into a one-line message


# ---------------------------------------------------------------- QA-LoRA: merging moves zero points only


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_qalora_merge_folds_into_fractional_zero_points_exactly(bits):
    quantizer = {2: "int2_g32", 3: "int3_g32", 4: "int4_g32"}[bits]
    model, cfg, _ = attached("qalora", quantizer, "harness", "harness")
    ids = batch()
    train(model, cfg, ids)
    layers = adapters.tuner_layers(model)
    assert all(layer.lora_B["default"].weight.abs().max() > 0 for _, layer in layers)  # trained: B != 0
    with model.disable_adapter():
        base_logits = logits(model, ids)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    unmerged, hidden = out.logits, out.hidden_states[-1]  # hidden: the normed input of the output layer
    before = {}
    for name, layer in layers:
        weight = layer.get_base_layer().weight
        before[name] = (weight.quantized, weight.dequantize(torch.float64),
                        layer.get_delta_weight("default").double())

    adapters.merge(model, cfg)
    merged = logits(model, ids)
    for name, layer in layers:
        old, w, d = before[name]
        new = layer.get_base_layer().weight.quantized
        assert torch.equal(new.qdata, old.qdata) and new.qdata.dtype == old.qdata.dtype  # codes untouched
        assert torch.equal(new.scale, old.scale) and new.scale.dtype == old.scale.dtype
        assert old.zero_point.dtype == torch.float16 and new.zero_point.dtype == torch.float32
        assert (new.zero_point != new.zero_point.round()).any()  # fractional: no integer grid holds it
        # w' = fl(fl(q - z') s) with z' = fl(z - fl(d / s)), w + d = (q - (z - d / s)) s exactly (w is exact:
        # q - z is a small integer, s an fp16). First order in u = eps / 2: |fl(d / s) - d / s| s <= u |d|,
        # the rounding of z' adds u (|z| s + |d|), the subtraction and the product u |w'| each:
        #   |w' - (w + d)| <= eps (|d| + |z| s / 2 + |w'|) + O(u^2); bound with |z| s in full for the u^2 terms
        z_s = (old.zero_point.double() * old.scale_values().double()).abs()
        z_s = z_s.view(-1, 1).expand(-1, old.block_size).reshape(w.shape)
        w_new = layer.get_base_layer().weight.dequantize(torch.float64)
        assert ((w_new - (w + d)).abs() <= EPS32 * (d.abs() + z_s + w_new.abs())).all(), name

    # The merged model computes x (W + d)^T where the unmerged one computes x W^T + s B A pool(x): the same
    # real numbers, rounded differently in fp32 (plus the fold's few-ulp weight error above). Bound each logit
    # by the textbook error bound of a K-term fp32 dot product at the output layer, K eps |h| @ |W_head|^T with
    # K = hidden size. The differences made upstream are of the same kind (reordered K-term sums, weights off
    # by a few ulps, K <= 2 hidden) and reach the head through RMSNorm, which removes scale, so they enter h at
    # that relative size too. Measured: max |merged - unmerged| = 2.4e-7 / 2.7e-7 / 2.7e-7 at 2 / 3 / 4 bits
    # (about 3 eps max |logit|), at most 2.5 eps |h| @ |W_head|^T: 25x below the bound.
    head = model.get_output_embeddings().weight
    magnitude = hidden.abs().double() @ head.abs().double().t()
    tolerance = MODEL.hidden_size * EPS32 * magnitude
    assert ((merged.double() - unmerged.double()).abs() <= tolerance).all()
    # and the check can fail: the adapter moves the logits by far more than the tolerance
    assert (unmerged - base_logits).abs().max() > 1000 * tolerance.max()

    adapters.unmerge(model)
    for name, layer in layers:
        restored = layer.get_base_layer().weight.quantized
        assert same_storage(restored.tensors(), before[name][0].tensors())


# ---------------------------------------------------------------- AdaLoRA's budget


@pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape")  # as in the matrix
@pytest.mark.parametrize("module, kind", [("harness", "harness"), ("bitsandbytes", "bnb4")])
def test_adalora_budget_falls_to_the_target_total_rank(module, kind, tmp_path):
    init_r, target_r, steps = 6, 2, 8
    model, cfg, _ = attached("adalora", "nf4", module, kind, total_steps=steps, rank=target_r, init_r=init_r,
                             tinit=1, tfinal=1, deltaT=1)
    ranks = cfg.report(model)["final_ranks"]  # {layer: non-zero entries of its Λ}
    assert set(ranks.values()) == {0}  # Λ (lora_E) starts at zero
    train(model, cfg, batch(), steps=steps)
    ranks = cfg.report(model)["final_ranks"]
    assert len(ranks) == len(adapters.tuner_layers(model)) == 14
    assert all(0 <= r <= init_r for r in ranks.values())
    assert any(r != init_r for r in ranks.values())
    # PEFT's RankAllocator (peft/tuners/adalora/layer.py): init_bgt = init_r * n_layers, target_bgt =
    # target_r * n_layers. update_and_allocate at step = total_step - tfinal (7, our last step, counted from 0
    # as harness.training does) forces a mask with budget_schedule(7): mul_coeff = 1 - (7 - tinit) /
    # (total_step - tfinal - tinit) = 0, so budget = target_bgt; mask_to_budget zeroes the init_bgt - budget
    # triplets scoring at or below the k-th smallest importance (continuous scores: no ties), and no optimizer
    # step follows. So exactly target_r * n_layers singular values survive.
    assert sum(ranks.values()) == target_r * len(ranks)
    assert model.base_model.rankallocator.target_bgt == target_r * len(ranks)

    # PEFT saves the adapter cut to these ranks; loading puts them back in place (dropped ranks at zero)
    adapters.save(model, tmp_path, cfg)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert {k.removesuffix(".lora_E"): sum(v) for k, v in saved.items()} == ranks
    loaded = adapters.load(base_model("nf4", module), tmp_path, cfg)
    assert cfg.report(loaded)["final_ranks"] == ranks
    assert torch.equal(logits(loaded, batch(1)), logits(model, batch(1)))


# ---------------------------------------------------------------- LoftQ


def loftq_errors(quantizer: str, module: str, kind: str, iters: int):
    """({layer: ||W - deq(quant(W))||}, {layer: ||W - deq(Q) - s B A|| after LoftQ}, {layer: W}, {layer: the
    singular values of the plain residual W - deq(quant(W))})."""
    model, _ = load_model(MODEL)
    weights = {n: model.get_submodule(n).weight.detach().clone() for n in target_layers(model)}
    quant = qconfig(quantizer).build()
    residual = {n: w - quant.quantize(w, name=n).dequantize(torch.float32) for n, w in weights.items()}
    cfg = adapter("lora", init="loftq", loftq_iters=iters)
    base = cfg.check_base(qconfig(quantizer), kind)
    quantize_model(model, qconfig(quantizer), module=module)
    peft_model = adapters.attach(model, cfg, total_steps=1, base=base, base_weights=weights)
    errors = {}
    for name, layer in adapters.tuner_layers(peft_model):
        plain = name.removeprefix("base_model.model.")
        low_rank = layer.get_delta_weight("default").float()
        errors[plain] = (weights[plain] - base_layer.dequantized_weight(layer.get_base_layer()) - low_rank).norm()
    plain = {n: r.norm() for n, r in residual.items()}
    singular = {n: torch.linalg.svdvals(r.double()) for n, r in residual.items()}
    return plain, errors, weights, singular


@pytest.mark.parametrize("quantizer, module, kind", [
    ("nf4", "harness", "harness"), ("int4", "harness", "harness"), ("int2_g32", "harness", "harness"),
    ("nf4", "bitsandbytes", "bnb4"),
])
def test_loftq_starts_closer_to_the_full_precision_weights(quantizer, module, kind):
    plain, one, weights, singular = loftq_errors(quantizer, module, kind, iters=1)
    _, three, _, _ = loftq_errors(quantizer, module, kind, iters=3)
    assert one.keys() == plain.keys() and len(one) == 14
    for name in plain:
        assert one[name] < plain[name] and three[name] < plain[name], name
        # One iteration is "quantize, then the best rank-r fit of the residual R": by Eckart-Young the error
        # left is the tail of R's singular values, sqrt(sum_{i > r} s_i^2). In fp32, each entry of s B A is a
        # RANK-term sum of terms s_k u_ik v_jk whose magnitudes add up to at most s_1 (Cauchy-Schwarz), so it
        # is off by about RANK eps s_1; the two subtractions forming W - deq(Q) - s B A add eps |R_ij| <= eps s_1
        # each. Over the out x in entries: sqrt(out in) (RANK + 2) eps s_1 in norm (measured: under 2% of it).
        tail = singular[name][RANK:].square().sum().sqrt()
        bound = weights[name].numel() ** 0.5 * (RANK + 2) * EPS32 * singular[name][0]
        assert abs(one[name].double() - tail) <= bound, name
    # more alternating steps do not make the start worse on average
    assert sum(three.values()) <= sum(one.values())


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
