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
