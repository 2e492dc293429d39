"""harness.sweep.budget: the adapters grid matches every adapter to LoRA's trainable-parameter budget."""

from __future__ import annotations

from harness.sweep.plan import plan_sweep
from tests.sweep.conftest import TINY


def test_adapters_grid_matches_the_lora_budget():
    cells = plan_sweep(["+grid=adapters", *TINY]).cells
    reasons = {c.overrides[0]: c.reason for c in cells}
    lora = int(reasons["adapter=lora"].split(": ")[1].split()[0].replace(",", ""))
    loha = int(reasons["adapter=loha"].split(": ")[1].split()[0].replace(",", ""))
    assert lora == loha  # LoHa's two rank-r pairs at half LoRA's rank: exactly the same count
    assert [c.status for c in cells if c.overrides[0] == "adapter=qalora"] == ["skipped"]
