"""harness.training.loop: the same seed gives the same losses bit for bit; the learning rate warms up linearly, then
decays by cosine."""

import math

import pytest

from harness.training import loop as training_loop
from harness.training import plan as training_plan
from harness.training.config import TrainSettings
from harness.training.loop import lr_factor
from harness.training.plan import plan
from tests.training.conftest import config


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


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    s = TrainSettings(steps=10, warmup_ratio=0.2)  # 2 warm-up steps
    factors = [lr_factor(step, s) for step in range(10)]
    assert factors[:2] == [0.5, 1.0]
    # after warm-up, step k of the remaining 8 sits at 0.5 (1 + cos(pi k / 8))
    assert factors[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


@pytest.mark.parametrize("scheduler", ["linear", "constant", "cosine"])
def test_after_the_warm_up_each_scheduler_follows_transformers_schedule(scheduler):
    """transformers' get_{linear,constant,cosine}_schedule_with_warmup is the reference after the warm-up (its
    warm-up starts at 0, ours at 1/warmup so the first step trains: the warm-up steps are checked apart)."""
    import torch
    import transformers

    s = TrainSettings(steps=12, warmup_ratio=0.25, scheduler=scheduler)  # 3 warm-up steps
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    make = {"linear": transformers.get_linear_schedule_with_warmup,
            "cosine": transformers.get_cosine_schedule_with_warmup,
            "constant": lambda o, w, _: transformers.get_constant_schedule_with_warmup(o, w)}[scheduler]
    reference = make(optimizer, 3, 12).lr_lambdas[0]
    assert [lr_factor(step, s) for step in range(3)] == [1 / 3, 2 / 3, 1.0]
    # float rounding of the same formula written two ways
    assert [lr_factor(step, s) for step in range(3, 12)] == pytest.approx([reference(k) for k in range(3, 12)],
                                                                          abs=1e-12)
    assert lr_factor(3, s) == 1.0  # every schedule starts its decay at the full learning rate


def test_an_unknown_scheduler_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"train.scheduler='step' .*cosine.*linear.*constant"):
        TrainSettings(scheduler="step")
