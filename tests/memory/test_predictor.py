"""harness.memory.predictor: the seeds' Mistral-7B example, its trainable count, and the meta-device traces against
real forwards (LoRA, full fine-tuning, QA-LoRA)."""

import pytest
import torch

from harness.config import adapter_config, quantizer_config
from harness.memory.predictor import PARTS, Scenario, activation_bytes, predict
from harness.models.skeleton import meta_model
from harness.models.sources import model_config

TINY = {"name": "tiny-llama", "source": "tiny", "arch": "llama"}
MISTRAL = {"name": "mistral-7b", "source": "hub", "hub_id": "mistralai/Mistral-7B-v0.1", "dtype": "bfloat16",
           "architecture": {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
                            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                            "num_key_value_heads": 8, "max_position_embeddings": 32768,
                            "tie_word_embeddings": False}}


def test_the_seeds_mistral_example():
    lora_linear = adapter_config({"name": "lora", "rank": 8, "targets": ["all-linear"]})
    mistral = model_config(MISTRAL)
    nf4_dq = quantizer_config({"name": "nf4", "double_quant": True, "compute_dtype": "bfloat16"})
    full = predict(mistral, Scenario("full", None, None), activations=False)
    lora = predict(mistral, Scenario("lora", None, lora_linear), activations=False)
    qlora = predict(mistral, Scenario("qlora", nf4_dq, lora_linear), activations=False)
    # LoRA r=8 on all 7 linear kinds of 32 layers: 32 x 8 x (2 x (4096+4096) + 2 x (4096+1024) + 3 x (4096+14336))
    assert lora["trainable_params"] == 32 * 8 * (2 * 8192 + 2 * 5120 + 3 * 18432) == 20_971_520
    assert full["trainable_params"] == 7_241_732_096
    gb = 1e9
    before = {k: sum(v[p] for p in PARTS if p != "activations") / gb for k, v in
              {"full": full, "lora": lora, "qlora": qlora}.items()}
    # 16 B per parameter; the seeds round 7.24B parameters to 7B (112 GB), so allow the 3.5% that rounding is
    assert before["full"] == pytest.approx(16 * 7.2417, rel=1e-3) and before["full"] == pytest.approx(112, rel=0.035)
    assert before["lora"] == pytest.approx(14.4, rel=0.035)  # the same rounding (2 B x 7B = 14 GB)
    # 4-bit: 4.127 bits for the linear weights, bf16 embeddings and lm_head, the adapter's 16 B per parameter
    assert before["qlora"] == pytest.approx(4.5, rel=0.02)


def test_the_seeds_trainable_count_is_lora_on_embeddings_and_lm_head_with_5_added_tokens():
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
    counts = predict(model_config(MISTRAL), Scenario("seeds", None, adapter_config(
        {"name": "lora", "rank": 8, "targets": targets})), activations=False, vocab_size=32005)
    assert counts["trainable_params"] == 21_549_136 and counts["total_params"] == 7_263_322_192


def test_predicted_activations_equal_the_tensors_a_real_forward_saves():
    """The meta-device trace against the same hook on a real CPU forward of the tiny model (fp32, LoRA q,v):
    the predictor's emulated fused attention saves what torch's CPU flash attention saves."""
    from adapters.base import attach
    from harness.models.sources import load_model

    lora = {"name": "lora", "rank": 4, "dropout": 0.1}
    predicted = activation_bytes(_meta_with(lora), 2, 32)
    model, _ = load_model(model_config(TINY))
    model.requires_grad_(False)
    real = attach(model, adapter_config(lora))
    assert activation_bytes(real, 2, 32) == predicted


def test_predicted_full_fine_tuning_activations_equal_a_real_forwards():
    """Full fine-tuning (every weight trainable, so every linear layer saves its input) traced on the meta device
    against the same hook on the real tiny model: the memory command's full-fine-tuning row counts them."""
    from harness.models.sources import load_model

    meta = meta_model(model_config(TINY), torch.float32).requires_grad_(True)
    real, _ = load_model(model_config(TINY))
    real.requires_grad_(True)
    assert activation_bytes(meta, 2, 32) == activation_bytes(real, 2, 32) > activation_bytes(_meta_with(
        {"name": "lora", "rank": 4, "targets": ["q_proj", "v_proj"]}), 2, 32)


def test_qalora_is_predicted_with_the_trainable_parameters_it_trains():
    """QA-LoRA on the meta model (LoRA whose A sees the group-pooled input) counts what the real QA-LoRA on an
    intk base trains, tensor for tensor, and its activation trace runs."""
    from harness.memory.predictor import attach_meta, parameter_counts
    from harness.training.config import TrainConfig
    from harness.training.plan import build_model, plan

    node = {"name": "qalora", "rank": 4, "targets": ["all-linear"]}
    intk = {"name": "intk", "bits": 4, "group_size": 32, "compute_dtype": "float32"}
    real, _, _ = build_model(plan(TrainConfig(model=TINY, data={"name": "janeausten"}, quantizer=intk,
                                              adapter=node, device="cpu", compute_dtype="float32")))
    meta = meta_model(model_config(TINY), torch.float32).requires_grad_(False)
    meta = attach_meta(meta, adapter_config(node), group_size=32)
    shapes = sorted(tuple(p.shape) for p in meta.parameters() if p.requires_grad)
    assert shapes == sorted(tuple(p.shape) for p in real.parameters() if p.requires_grad)
    assert parameter_counts(meta)[0] == parameter_counts(real)[0]
    assert activation_bytes(meta, 2, 32) > 0
    with pytest.raises(ValueError, match="group_size"):
        attach_meta(meta_model(model_config(TINY)), adapter_config(node))


def _meta_with(adapter):
    from harness.memory.predictor import attach_meta

    model = meta_model(model_config(TINY), torch.float32)
    model.requires_grad_(False)
    return attach_meta(model, adapter_config(adapter))
