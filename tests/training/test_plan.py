"""harness.training.plan: an evaluation (lm-eval's and perplexity()'s eval mode without grad) does not change the
gradients of training that follows it: the bitsandbytes repack guard holds through the plan's evaluate."""

import torch

from harness.training import plan as training_plan
from harness.training.plan import plan
from tests.training.conftest import config


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
