"""harness.evaluation.lm_eval_run: local lm-eval tasks (multiple choice, loglikelihood) give the hand-computed
numbers, on full-precision and quantized tiny models alike."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from harness.evaluation.lm_eval_run import run_lm_eval_tasks
from harness.evaluation.tasks import TaskSet
from harness.models.quantize import quantize_model
from quantizers.nf4 import NF4Config


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
    scores = run_lm_eval_tasks(model, tokenizer, TaskSet(["toy_mc"], [task]), max_length=64)

    # By hand: the choice with the highest summed log-likelihood after the question (lm-eval's `acc`)
    right = []
    for item in items:
        logliks = [continuation_loglik(model, tokenizer, item["question"], c) for c in item["choices"]]
        right.append(float(max(range(len(logliks)), key=logliks.__getitem__) == item["label"]))
    assert scores.metrics["toy_mc"]["acc"] == pytest.approx(sum(right) / len(items))  # a ratio of counts: equal
    assert scores.items["toy_mc"]["doc_id"] == [0, 1, 2, 3] and scores.items["toy_mc"]["acc"] == right


def test_local_loglikelihood_task_matches_hand_computed_perplexity(tiny, tmp_path):
    model, tokenizer = tiny
    items = [{"prompt": "Pride and", "target": " Prejudice"}, {"prompt": "Sense and", "target": " Sensibility"},
             {"prompt": "Northanger", "target": " Abbey"}]
    task = write_task(tmp_path, "toy_ll", items, "output_type: loglikelihood\ndoc_to_text: \"{{prompt}}\"\n"
                      "doc_to_target: \"{{target}}\"\nmetric_list:\n  - metric: perplexity\n")
    scores = run_lm_eval_tasks(model, tokenizer, TaskSet(["toy_ll"], [task]), max_length=64)

    # lm-eval's loglikelihood `perplexity` is exp(-mean over documents of the target's summed log-likelihood)
    lls = [continuation_loglik(model, tokenizer, item["prompt"], item["target"]) for item in items]
    # fp32 log-softmax summed over a few tokens on both sides: agreement to float rounding
    assert scores.metrics["toy_ll"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
    # per item, lm-eval logs each document's log-likelihood under `perplexity` (the aggregate exponentiates)
    assert scores.items["toy_ll"]["perplexity"] == pytest.approx(lls, rel=1e-4)  # fp32 rounding, as above
