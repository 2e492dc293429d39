"""Perplexity windows, the lm-eval cross-check, and local lm-eval tasks, on a tiny in-process model."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from harness.evaluation.lm_eval_run import lm_eval_rolling_nll, run_lm_eval_tasks
from harness.evaluation.perplexity import perplexity, prefix_token_id
from harness.models.quantize import quantize_model
from harness.models.sources import ModelConfig, load_model
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


def test_segment_losses_add_up_to_the_perplexity_and_follow_the_text(tiny):
    from harness.evaluation.perplexity import SEGMENT_TOKENS

    model, tokenizer = tiny
    ids = ids_of(tokenizer, TEXT * 3)
    result = perplexity(model, ids, 32, prefix_token=prefix_token_id(tokenizer))
    assert result.segment_tokens == [SEGMENT_TOKENS] * (ids.numel() // SEGMENT_TOKENS) + (
        [ids.numel() % SEGMENT_TOKENS] if ids.numel() % SEGMENT_TOKENS else [])
    # float64 sums of the same float32 token losses, grouped two ways: rounding only
    assert sum(result.segment_nll) / result.tokens == pytest.approx(result.nll, rel=1e-12)
    # each segment is its tokens' losses: the first segment of a longer text equals a text of that length alone
    # when the windows align (context 32 divides 128), up to fp32 rounding of the same forward passes
    head = perplexity(model, ids[:SEGMENT_TOKENS], 32, prefix_token=prefix_token_id(tokenizer))
    assert head.segment_nll[0] == pytest.approx(result.segment_nll[0], rel=1e-6)


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


def write_task(folder, name, items, body):
    """A local lm-eval task `name` over `items` (JSONL beside the YAML); body: the YAML after the data lines."""
    (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {name}.jsonl}}}}\n"
        f"test_split: test\n{body}")
    return folder / f"{name}.yaml"


def continuation_loglik(model, tokenizer, context: str, continuation: str) -> float:
    """Summed log-likelihood of the continuation's tokens after the context, tokenised separately as lm-eval does
    (no prefix token is needed: the context is non-empty)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0, :-1].float(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


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
    task = write_task(tmp_path, "toy_mc", items, "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
                      "doc_to_target: label\ndoc_to_choice: \"{{choices}}\"\nmetric_list:\n  - metric: acc\n")
    results = run_lm_eval_tasks(model, tokenizer, ["toy_mc"], [task], max_length=64)

    # By hand: the choice with the highest summed log-likelihood after the question (lm-eval's `acc`)
    correct = 0
    for item in items:
        scores = [continuation_loglik(model, tokenizer, item["question"], c) for c in item["choices"]]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    assert results["toy_mc"]["acc"] == pytest.approx(correct / len(items))  # a ratio of counts: float equality


def test_local_loglikelihood_task_matches_hand_computed_perplexity(tiny, tmp_path):
    model, tokenizer = tiny
    items = [{"prompt": "Pride and", "target": " Prejudice"}, {"prompt": "Sense and", "target": " Sensibility"},
             {"prompt": "Northanger", "target": " Abbey"}]
    task = write_task(tmp_path, "toy_ll", items, "output_type: loglikelihood\ndoc_to_text: \"{{prompt}}\"\n"
                      "doc_to_target: \"{{target}}\"\nmetric_list:\n  - metric: perplexity\n")
    results = run_lm_eval_tasks(model, tokenizer, ["toy_ll"], [task], max_length=64)

    # lm-eval's loglikelihood `perplexity` is exp(-mean over documents of the target's summed log-likelihood)
    lls = [continuation_loglik(model, tokenizer, item["prompt"], item["target"]) for item in items]
    # fp32 log-softmax summed over a few tokens on both sides: agreement to float rounding
    assert results["toy_ll"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
