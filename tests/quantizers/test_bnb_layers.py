"""The bitsandbytes repack trap and its guard.

On a CPU with AVX512-BF16, Linear4bit.forward in eval mode with an input that needs no grad converts its
weight in place into an inference-only layout (codes re-tiled to (out, in/2), absmax rounded to bf16, double
quantization undone). Backward through a repacked layer gives no input gradient, without an error, so
anything trained below it (adapters, prompts, embeddings) learns from a wrong gradient. lm-eval runs exactly
such a forward (model.eval() under no_grad). quantize_model guards every layer; these tests show the guard
holds and, where the CPU has the instruction set, that the trap is real.
"""

import pytest
import torch
from bitsandbytes.functional import has_avx512bf16
from bitsandbytes.nn import Linear4bit

from harness.models.quantize import quantize_model
from harness.models.sources import ModelConfig, load_model
from harness.registry import QUANTIZERS
from quantizers.bnb_layers import guard_bnb_repack
from quantizers.storage import model_storage_bytes

TEXT = "Training after an evaluation must see the same gradients as before it."


def quantized_tiny_llama(guard: bool):
    """A tiny Llama with nf4 (+double quant) Linear4bit layers and trainable input embeddings: the simplest
    trainable path whose gradient has to flow back through every quantized layer."""
    model, tok = load_model(ModelConfig(name="tiny-llama", source="tiny", arch="llama"))
    nf4_dq = QUANTIZERS.get("nf4")(double_quant=True, compute_dtype="float32")
    quantize_model(model, nf4_dq, module="bitsandbytes")
    if not guard:  # what a Linear4bit does by default: take the fast path wherever the CPU has it
        for m in model.modules():
            if isinstance(m, Linear4bit):
                m.support_avx512bf16_for_cpu = has_avx512bf16()
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(True)
    return model, tok(TEXT, return_tensors="pt").input_ids


def embedding_grad(model, ids) -> torch.Tensor | None:
    model.train()
    emb = model.get_input_embeddings().weight
    emb.grad = None
    model(ids, labels=ids).loss.backward()
    return None if emb.grad is None else emb.grad.clone()


def evaluate(model, ids) -> None:
    """What lm-eval does to the model: eval mode, no grad, a forward."""
    model.eval()
    with torch.no_grad():
        model(ids)


def layer_state(model) -> dict[str, tuple[torch.Tensor, ...]]:
    """The stored codes and scales of every Linear4bit."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Linear4bit):
            qs = m.weight.quant_state
            out[name] = tuple(t.clone() for t in (m.weight.data, qs.absmax, qs.state2.absmax, qs.offset))
    return out


def test_guarded_model_trains_identically_after_an_evaluation():
    model, ids = quantized_tiny_llama(guard=True)
    state, storage = layer_state(model), model_storage_bytes(model)
    before = embedding_grad(model, ids)
    evaluate(model, ids)
    after = embedding_grad(model, ids)
    assert before is not None and before.abs().sum() > 0
    assert torch.equal(before, after)  # bit-identical: same weights, same kernels, same order
    assert model_storage_bytes(model) == storage
    for name, tensors in layer_state(model).items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, state[name], strict=True)), name


@pytest.mark.skipif(not has_avx512bf16(), reason="CPU lacks avx512_bf16: bitsandbytes never repacks here")
# torch's warning during the backward is the only hint the trap gives (and it may be shown once per process)
@pytest.mark.filterwarnings("ignore:.*autograd kernel was not registered")
def test_unguarded_model_is_repacked_by_an_evaluation_and_trains_wrongly():
    model, ids = quantized_tiny_llama(guard=False)
    shapes = {n: t[0].shape for n, t in layer_state(model).items()}
    storage = model_storage_bytes(model)
    before = embedding_grad(model, ids)
    evaluate(model, ids)
    after = embedding_grad(model, ids)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.quant_state.packing_format_for_cpu
    assert q_proj.weight.shape == (q_proj.out_features, q_proj.in_features // 2)  # was (numel / 2, 1)
    assert q_proj.weight.shape != shapes["model.layers.0.self_attn.q_proj"]
    assert model_storage_bytes(model) != storage  # bf16 absmax instead of 8-bit codes + constants
    # the residual stream still carries some gradient to the embeddings, so training goes on, wrongly
    assert after is not None and not torch.allclose(before, after)
    with pytest.raises(RuntimeError, match="already repacked"):  # too late to guard: the guard says so
        guard_bnb_repack(model)
