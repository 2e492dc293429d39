"""adapters.adalora: the budget falls to its target total rank, and the cut adapter saves and loads."""

from __future__ import annotations

import json

import pytest
import torch

from adapters import base as adapters
from tests.adapters.conftest import attached, base_model, batch, logits, train

pytestmark = [
    # bitsandbytes' int8 matmul on the CPU notes, on every call, that it casts fp32 inputs to fp16
    pytest.mark.filterwarnings("ignore:MatMul8bitLt"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


@pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape")  # as in the matrix
@pytest.mark.parametrize("module, kind", [("harness", "harness"), ("bitsandbytes", "bnb4")])
def test_adalora_budget_falls_to_the_target_total_rank(module, kind, tmp_path):
    init_r, target_r, steps = 6, 2, 8
    model, cfg, _ = attached("adalora", "nf4", module, kind, total_steps=steps, rank=target_r, init_r=init_r,
                             tinit=1, tfinal=1, deltaT=1)
    ranks = cfg.report(model)["final_ranks"]  # {layer: non-zero entries of its Λ}
    assert set(ranks.values()) == {0}  # Λ (lora_E) starts at zero
    train(model, cfg, batch(), steps=steps)
    ranks = cfg.report(model)["final_ranks"]
    assert len(ranks) == len(adapters.tuner_layers(model)) == 14
    assert all(0 <= r <= init_r for r in ranks.values())
    assert any(r != init_r for r in ranks.values())
    # PEFT's RankAllocator (peft/tuners/adalora/layer.py): init_bgt = init_r * n_layers, target_bgt =
    # target_r * n_layers. update_and_allocate at step = total_step - tfinal (7, our last step, counted from 0
    # as harness.training does) forces a mask with budget_schedule(7): mul_coeff = 1 - (7 - tinit) /
    # (total_step - tfinal - tinit) = 0, so budget = target_bgt; mask_to_budget zeroes the init_bgt - budget
    # triplets scoring at or below the k-th smallest importance (continuous scores: no ties), and no optimizer
    # step follows. So exactly target_r * n_layers singular values survive.
    assert sum(ranks.values()) == target_r * len(ranks)
    assert model.base_model.rankallocator.target_bgt == target_r * len(ranks)

    # PEFT saves the adapter cut to these ranks; loading puts them back in place (dropped ranks at zero)
    adapters.save(model, tmp_path, cfg)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert {k.removesuffix(".lora_E"): sum(v) for k, v in saved.items()} == ranks
    loaded = adapters.load(base_model("nf4", module), tmp_path, cfg)
    assert cfg.report(loaded)["final_ranks"] == ranks
    assert torch.equal(logits(loaded, batch(1)), logits(model, batch(1)))
