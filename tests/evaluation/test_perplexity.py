"""harness.evaluation.perplexity: windows score every token once with its context, segment losses add up, the
lm-eval cross-check, training mode restored, on a tiny in-process model."""

from __future__ import annotations

import math

import pytest
import torch

from harness.evaluation.lm_eval_run import lm_eval_rolling_nll
from harness.evaluation.perplexity import perplexity, prefix_token_id

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ") * 4


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
