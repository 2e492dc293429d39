"""harness.evaluation.packed_scoring: packed batched lm-eval scoring gives lm-eval's own numbers."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from harness.evaluation.lm_eval_run import lm_eval_model
from harness.evaluation.packed_scoring import PackedHFLM
from harness.models.sources import ModelConfig, load_model


def greedy_pair(model, tokenizer) -> tuple[str, str]:
    """A (context, continuation) whose continuation is the model's own 2-token greedy output, as printable text
    (a random model's argmax is often a non-ASCII byte or a special token, so contexts are tried in turn)."""
    for k in range(200):
        context = f"Emma Woodhouse, handsome, clever, and rich, {k}"
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            for _ in range(2):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        text = tokenizer.decode(ids[-2:])
        if text.isascii() and text.isprintable() and tokenizer(text, add_special_tokens=False)["input_ids"] == ids[-2:]:
            return context, text
    raise AssertionError("no context has a printable greedy continuation")


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_packed_scoring_gives_lm_evals_own_scores(arch):
    model, tokenizer = load_model(ModelConfig(name=f"tiny-{arch}", source="tiny", arch=arch, max_positions=128))
    context, greedy = greedy_pair(model, tokenizer)
    pairs = [(context, greedy), (context, " with a comfortable home"), (context, "!"),  # one context, packed once
             ("Mr. Knightley", ", a sensible man"), ("Pride", " and Prejudice"),  # rows of other lengths: padding
             ("x" * 100, " is longer than max_length")]  # lm-eval cuts this one from the left; packing leaves it
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    reference = lm_eval_model(model, tokenizer, max_length=64, batch_size=1).loglikelihood(requests, True)
    packed_lm = lm_eval_model(model, tokenizer, max_length=64, batch_size=4)
    assert isinstance(packed_lm, PackedHFLM) and packed_lm._packing_supported()  # else this test proves nothing
    packed = packed_lm.loglikelihood(requests, True)
    assert packed[0][1] and reference[0][1]  # the greedy continuation is recognised on both paths
    assert [g for _, g in packed] == [g for _, g in reference]
    # float32 log-likelihoods of a few tokens, summed in another order with extra masked keys: ~1e-6 apart
    assert [ll for ll, _ in packed] == pytest.approx([ll for ll, _ in reference], abs=1e-4)
