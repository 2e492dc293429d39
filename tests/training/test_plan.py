"""harness.training.plan: the window of the evaluation; an evaluation (lm-eval's and perplexity()'s eval mode without grad) does not change the
gradients of training that follows it: the bitsandbytes repack guard holds through the plan's evaluate."""

import pytest
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


def test_eval_context_defaults_to_the_models_positions_and_an_explicit_one_above_them_is_refused(text_file,
                                                                                                 tmp_path):
    """The tiny Llama has 256 positions: the default window is min(1024, 256); asking for more stops in plan()."""
    from harness.models.sources import DEFAULT_CONTEXT
    from harness.training.plan import eval_context, plan
    from tests.training.conftest import config

    p = plan(config(text_file, tmp_path, eval_context=None))
    assert eval_context(None, p) == min(DEFAULT_CONTEXT, p.model.max_positions)
    with pytest.raises(ValueError, match=r"train\.eval_context=512 is above the maximum positions of model "
                                         r"'tiny-llama' \(256\)"):
        plan(config(text_file, tmp_path, eval_context=512))
