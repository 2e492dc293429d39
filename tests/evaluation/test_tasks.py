"""harness.evaluation.tasks: the shipped local LAMBADA example stops without its file and runs with it.
(lm-eval's own registry tasks: test_registry_tasks.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.models.sources import ModelConfig, load_model


def test_shipped_local_lambada_example_stops_without_its_file_and_runs_with_it(tmp_path, monkeypatch):
    from harness.evaluation.lm_eval_run import run_lm_eval_tasks
    from harness.evaluation.tasks import resolve_tasks

    monkeypatch.setenv("HOME", str(tmp_path))  # the example reads ~/data/lambada/lambada_test.jsonl
    with pytest.raises(FileNotFoundError, match=r"lambada_local.*lambada_test\.jsonl.*does not exist"):
        resolve_tasks(["lambada_local"])
    lines = ["Emma was handsome and clever and rich , and Emma", "Harriet walked to Highbury , then Harriet"]
    (tmp_path / "data" / "lambada").mkdir(parents=True)
    (tmp_path / "data" / "lambada" / "lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                                            for t in lines))
    model, tokenizer = load_model(ModelConfig(name="tiny-llama", source="tiny", arch="llama"))
    results = run_lm_eval_tasks(model, tokenizer, resolve_tasks(["lambada_local"]), max_length=64).metrics
    # by hand, as lambada_openai splits a line: everything before the last space is the context
    lls = []
    for text in lines:
        context, target = text.rsplit(" ", 1)
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids + cont])).logits[0, :-1], -1)
        lls.append(sum(logp[len(ids) - 1 + i, t].item() for i, t in enumerate(cont)))
    # float32 log-probabilities of a few tokens on both sides: equal to rounding
    assert results["lambada_local"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
    assert "acc" in results["lambada_local"]
