"""Perplexity windows, the lm-eval cross-check, and local lm-eval tasks, on a tiny in-process model."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from harness.evaluate import lm_eval_rolling_nll, perplexity, prefix_token_id, run_lm_eval_tasks
from harness.models import ModelConfig, load_model
from harness.quantize_model import quantize_model
from quantizers.nf4 import NF4Config

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ") * 4


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(name="tiny-llama", source="tiny", arch="llama", max_positions=512))


def ids_of(tokenizer, text):
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def brute_force_nll(model, seq, context_length, stride):
    """Score every token with its own forward pass over exactly the context the windowed method gives it."""
    total = 0.0
    with torch.no_grad():
        for start in range(1, seq.numel(), stride):
            end = min(start + stride, seq.numel())
            begin = max(0, end - 1 - context_length)
            for p in range(start, end):
                logits = model(input_ids=seq[begin:p].unsqueeze(0)).logits[0, -1]
                total -= torch.log_softmax(logits.double(), -1)[seq[p]].item()
    return total


@pytest.mark.parametrize("context_length,stride", [(16, 16), (16, 5), (8, 1)])
def test_windows_score_every_token_once_with_its_context(tiny, context_length, stride):
    model, tokenizer = tiny
    ids = ids_of(tokenizer, TEXT[:60])
    prefix = prefix_token_id(tokenizer)
    result = perplexity(model, ids, context_length, stride, prefix)
    assert result.tokens == ids.numel()
    seq = torch.cat([torch.tensor([prefix]), ids])
    expected = brute_force_nll(model, seq, context_length, stride) / ids.numel()
    # fp32 logits vs the brute force's fp64 log-softmax, and a causal model's logits for a prefix do not depend on
    # what follows it: only float rounding separates the two (observed ~1e-7 relative)
    assert result.nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("context_length", [32, 64])
def test_perplexity_agrees_with_lm_eval_loglikelihood_rolling(tiny, context_length):
    model, tokenizer = tiny
    ids = ids_of(tokenizer, TEXT)
    ours = perplexity(model, ids, context_length, prefix_token=prefix_token_id(tokenizer))
    nll, tokens = lm_eval_rolling_nll(model, tokenizer, TEXT, max_length=context_length)
    assert tokens == ours.tokens
    # the bar is 1%; both score the same windows in fp32, so they agree far closer (observed ~1e-7)
    assert ours.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-3)


def test_perplexity_restores_training_mode_and_rejects_bad_stride(tiny):
    model, tokenizer = tiny
    model.train()
    perplexity(model, ids_of(tokenizer, "a short text"), 8)
    assert model.training
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, ids_of(tokenizer, "a short text"), 8, stride=9)


@pytest.mark.parametrize("module", [None, "harness", "bitsandbytes"])
def test_local_multiple_choice_task_matches_hand_computed_accuracy(tiny, tmp_path, module):
    """lm-eval on full-precision and quantized models alike (the bnb one is guarded against repacking)."""
    model, tokenizer = tiny
    if module is not None:
        model = copy.deepcopy(model)
        quantize_model(model, NF4Config(compute_dtype="float32"), module=module)
    items = [
        {"question": "The sky is", "choices": [" blue", " green", " loud"], "label": 0},
        {"question": "Two and two make", "choices": [" four", " five"], "label": 1},
        {"question": "Emma Woodhouse was", "choices": [" handsome", " clever", " rich", " dull"], "label": 2},
        {"question": "A single man must be", "choices": [" in want", " a wife"], "label": 0},
    ]
    (tmp_path / "toy.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "toy.yaml").write_text(
        "task: toy_mc\ndataset_path: json\ndataset_kwargs: {data_files: {test: toy.jsonl}}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{question}}\"\n"
        "doc_to_target: label\ndoc_to_choice: \"{{choices}}\"\nmetric_list:\n  - metric: acc\n")
    results = run_lm_eval_tasks(model, tokenizer, ["toy_mc"], [tmp_path / "toy.yaml"], max_length=64)

    # By hand: pick the choice with the highest summed log-likelihood of its tokens after the question
    # (lm-eval's `acc`: context and continuation tokenised separately, no prefix token needed as the context
    # is non-empty).
    correct = 0
    with torch.no_grad():
        for item in items:
            ctx = tokenizer(item["question"], add_special_tokens=False)["input_ids"]
            scores = []
            for choice in item["choices"]:
                cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
                seq = torch.tensor([ctx + cont])
                logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1].float(), -1)
                scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
            correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    assert results["toy_mc"]["acc"] == pytest.approx(correct / len(items))


def test_local_loglikelihood_task_matches_hand_computed_perplexity(tiny, tmp_path):
    model, tokenizer = tiny
    items = [{"prompt": "Pride and", "target": " Prejudice"}, {"prompt": "Sense and", "target": " Sensibility"},
             {"prompt": "Northanger", "target": " Abbey"}]
    (tmp_path / "ll.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "ll.yaml").write_text(
        "task: toy_ll\ndataset_path: json\ndataset_kwargs: {data_files: {test: ll.jsonl}}\n"
        "output_type: loglikelihood\ntest_split: test\ndoc_to_text: \"{{prompt}}\"\n"
        "doc_to_target: \"{{target}}\"\nmetric_list:\n  - metric: perplexity\n")
    results = run_lm_eval_tasks(model, tokenizer, ["toy_ll"], [tmp_path / "ll.yaml"], max_length=64)

    # lm-eval's loglikelihood `perplexity` is exp(-mean over documents of the target's summed log-likelihood)
    lls = []
    with torch.no_grad():
        for item in items:
            ctx = tokenizer(item["prompt"], add_special_tokens=False)["input_ids"]
            cont = tokenizer(item["target"], add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0, :-1].float(), -1)
            lls.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
    # fp32 log-softmax summed over a few tokens on both sides: agreement to float rounding
    assert results["toy_ll"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
