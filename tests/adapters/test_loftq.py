"""adapters.lora.loftq: LoftQ starts closer to the full-precision weights than plain quantization (by Eckart-Young's
tail, within fp32 rounding), and needs a quantizer."""

from __future__ import annotations

import pytest
import torch

from adapters import base as adapters
from adapters.base import IncompatibleError
from harness.models.quantize import quantize_model, target_layers
from harness.models.sources import load_model
from harness.registry import ADAPTERS
from quantizers import layers as base_layer
from tests.adapters.conftest import EPS32, MODEL, RANK, adapter, qconfig

pytestmark = [
    # bitsandbytes' int8 matmul on the CPU notes, on every call, that it casts fp32 inputs to fp16
    pytest.mark.filterwarnings("ignore:MatMul8bitLt"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


def test_loftq_without_a_quantizer_is_refused():
    cfg = ADAPTERS.get("lora")(rank=RANK, targets=["all-linear"], init="loftq")
    with pytest.raises(IncompatibleError, match=r"init=loftq .* needs a quantizer.*use init=default"):
        cfg.check_base(None, "dense")
    assert ADAPTERS.get("lora")(rank=RANK, init="default").check_base(None, "dense") == {}


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
    ("hqq3_g32", "harness", "harness"),
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
