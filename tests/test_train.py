"""The training loop: its output contract, bit-for-bit seeding, checks before work, and the bnb repack trap."""

import csv
import json
import math

import pytest
import torch

from adapters.base import IncompatibleError
from harness import device as harness_device
from harness.training import loop as training_loop
from harness.training import plan as training_plan
from harness.training import run as training_run
from harness.training.config import TrainConfig, TrainSettings
from harness.training.loop import lr_factor
from harness.training.plan import plan

TINY = {"name": "tiny-llama", "source": "tiny", "arch": "llama"}
REQUIRED_METRICS = {"perplexity_before", "perplexity_after", "perplexity_merged", "loss_first", "loss_last",
                    "trainable_params", "total_params", "train_tokens", "train_tokens_per_second",
                    "peak_memory_bytes", "seconds"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A small corpus on disk: 60 paragraphs of varied sentences (the byte tokenizer makes ~30K tokens)."""
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees".split()
    gen = torch.Generator().manual_seed(0)
    paragraphs = [" ".join(words[i] for i in torch.randint(0, len(words), (90,), generator=gen).tolist()) + "."
                  for _ in range(60)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return str(path)


def config(text_file, tmp_path, quantizer=None, adapter=None, module="auto", **train):
    settings = {"steps": 4, "batch_size": 2, "seq_len": 32, "eval_tokens": 256, "eval_context": 64,
                "lr": 1e-2, "progress": False, **train}
    return TrainConfig(model=TINY, data={"name": "text_file", "path": text_file},
                       quantizer=quantizer or {"name": "nf4", "block_size": 64},
                       adapter=adapter or {"name": "lora", "rank": 4, "targets": ["all-linear"]},
                       train=TrainSettings(**settings), module=module, device="cpu", compute_dtype="float32",
                       output_dir=str(tmp_path / "run"))


def test_a_run_writes_the_output_contract(text_file, tmp_path):
    metrics = training_run.run(config(text_file, tmp_path))
    out = tmp_path / "run"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= REQUIRED_METRICS
    assert {r["metric"]: float(r["value"]) for r in rows} == pytest.approx(metrics)
    with open(out / "loss.csv") as f:
        losses = list(csv.DictReader(f))
    assert list(losses[0]) == ["step", "loss", "lr", "tokens_per_second"] and len(losses) == 4
    assert float(losses[0]["loss"]) == metrics["loss_first"] and float(losses[-1]["loss"]) == metrics["loss_last"]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["resolved"]["device"] == "cpu" and meta["resolved"]["compute_dtype"] == "float32"
    assert meta["command"] == "train" and meta["git_commit"]
    # 4 steps of 2 x 32 tokens; the trainable share is PEFT's count
    assert metrics["train_tokens"] == 4 * 2 * 32
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    # the lr is 1e-2 on a random model: training on the corpus must lower the validation perplexity
    assert metrics["perplexity_after"] < metrics["perplexity_before"]


def test_zero_steps_evaluates_the_quantized_base_only(text_file, tmp_path):
    trained = training_run.run(config(text_file, tmp_path / "a", steps=1))
    metrics = training_run.run(config(text_file, tmp_path / "b", steps=0))
    assert "perplexity_after" not in metrics and "train_seconds" not in metrics
    # the same seed, base and text: the base's perplexity is the one a trained run starts from, bit for bit
    assert metrics["perplexity_before"] == trained["perplexity_before"]
    assert metrics["weight_sqnr_db"] == trained["weight_sqnr_db"] and metrics["bits_per_param"] > 4


def test_the_same_seed_gives_the_same_losses_bit_for_bit(text_file, tmp_path):
    adapter = {"name": "lora", "rank": 4, "dropout": 0.1, "targets": ["all-linear"]}  # dropout uses the RNG too

    def losses(seed, where):
        cfg = config(text_file, tmp_path / where, adapter=adapter, seed=seed)
        p = plan(cfg)
        model, tokenizer, _ = training_plan.build_model(p)
        blocks, _ = training_plan.data_for(p, tokenizer)
        return [r["loss"] for r in training_loop.fine_tune(model, blocks, p)]

    first, second, other = losses(0, "a"), losses(0, "b"), losses(1, "c")
    assert first == second  # exact float equality, not approx
    assert first != other


def test_an_incompatible_pair_is_rejected_before_any_model_is_loaded(text_file, tmp_path, monkeypatch):
    def no_loading(*_):
        raise AssertionError("a model was loaded before the configs were checked")

    monkeypatch.setattr("harness.models.sources.load_model", no_loading)
    cfg = config(text_file, tmp_path, adapter={"name": "qalora", "rank": 4})
    with pytest.raises(IncompatibleError, match="intk"):
        training_run.run(cfg)
    with pytest.raises(IncompatibleError, match="module=harness"):
        plan(config(text_file, tmp_path, adapter={"name": "loha"}, module="bitsandbytes"))


@pytest.mark.parametrize("flags, expected", [({"avx512_bf16", "avx512f"}, "bfloat16"), ({"amx_bf16"}, "bfloat16"),
                                             ({"avx2", "fma"}, "float32"), (set(), "float32")])
def test_compute_dtype_auto_never_picks_an_emulated_dtype_on_the_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(harness_device, "cpu_flags", lambda: flags)
    assert harness_device.resolve_compute_dtype("auto", torch.device("cpu")) == expected
    assert harness_device.resolve_compute_dtype("float16", torch.device("cpu")) == "float16"  # explicit wins


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match=r"train\.steps=-1"):
        TrainSettings(steps=-1)
    with pytest.raises(ValueError, match=r"train\.optimizer='sgd'.*adamw"):
        TrainSettings(optimizer="sgd")
    with pytest.raises(ValueError, match=r"device='gpu'"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match=r"compute_dtype='fp8'"):
        TrainConfig(compute_dtype="fp8")


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    s = TrainSettings(steps=10, warmup_ratio=0.2)  # 2 warm-up steps
    factors = [lr_factor(step, s) for step in range(10)]
    assert factors[:2] == [0.5, 1.0]
    # after warm-up, step k of the remaining 8 sits at 0.5 (1 + cos(pi k / 8))
    assert factors[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


def test_training_after_an_evaluation_gets_the_same_gradients(text_file, tmp_path):
    """lm-eval and perplexity() put the model in eval mode without grad; a bitsandbytes Linear4bit would then
    repack its weight for good on AVX512-BF16 CPUs. The guard keeps training after an evaluation identical."""
    cfg = config(text_file, tmp_path, module="bitsandbytes")

    def gradients(evaluate_first):
        p = plan(cfg)
        model, tokenizer, _ = training_plan.build_model(p)
        blocks, ids = training_plan.data_for(p, tokenizer)
        if evaluate_first:
            training_plan.evaluate(model, ids, tokenizer, p)
        model.train()
        model(input_ids=blocks[:2], labels=blocks[:2]).loss.backward()
        return {n: q.grad.clone() for n, q in model.named_parameters() if q.requires_grad}

    with_eval, without = gradients(True), gradients(False)
    assert with_eval.keys() == without.keys() and with_eval
    assert all(torch.equal(with_eval[n], without[n]) for n in without)


def test_adalora_records_the_final_rank_of_every_layer(text_file, tmp_path):
    adapter = {"name": "adalora", "rank": 2, "init_r": 4, "tinit": 1, "tfinal": 1, "targets": ["q_proj", "v_proj"]}
    training_run.run(config(text_file, tmp_path, adapter=adapter, steps=6))
    ranks = json.loads((tmp_path / "run" / "run.json").read_text())["resolved"]["final_ranks"]
    assert len(ranks) == 4  # 2 layers x (q_proj, v_proj)
    assert all(0 <= r <= 4 for r in ranks.values()) and sum(ranks.values()) < 4 * 4
