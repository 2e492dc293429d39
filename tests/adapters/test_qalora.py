"""adapters.qalora: merging moves the group zero points only, exactly (within the fold's rounding bound), and
unmerging restores the storage."""

from __future__ import annotations

import pytest
import torch

from adapters import base as adapters
from tests.adapters.conftest import EPS32, MODEL, attached, batch, logits, same_storage, train

pytestmark = [
    # bitsandbytes' int8 matmul on the CPU notes, on every call, that it casts fp32 inputs to fp16
    pytest.mark.filterwarnings("ignore:MatMul8bitLt"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


# intk at every width, and intk's format as GPTQ (calibrated), AWQ (scales folded into the model) and HQQ
# (fractional fp16 zero points from the start) write it
@pytest.mark.parametrize("quantizer", ["int2_g32", "int3_g32", "int4_g32", "gptq3_g32", "awq3_g32", "hqq3_g32"])
def test_qalora_merge_folds_into_fractional_zero_points_exactly(quantizer):
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
        # w' = fl(fl(q - z') s) with z' = fl(z - fl(d / s)), w + d = (q - (z - d / s)) s exactly (w is exact
        # in float64: q an integer, z and s fp16, HQQ's fractional z included). First order in u = eps / 2: |fl(d / s) - d / s| s <= u |d|,
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
