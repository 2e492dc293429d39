"""`match_budget: lora:8`: each adapter at the rank whose trainable parameters come closest to a budget,
counted on the meta device.
"""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from harness.sweep.config import SweepConfig


def trainable_count(config: SweepConfig, adapter) -> int:
    """Trainable parameters of `adapter` (a validated AdapterConfig) on the model, counted on the meta device.
    QA-LoRA is sized by the quantizer's group size (its A sees the group-pooled input)."""
    from harness.config import quantizer_config
    from harness.memory.predictor import attach_meta, parameter_counts
    from harness.models.skeleton import meta_model
    from harness.models.sources import model_config

    model = meta_model(model_config(config.model))
    group = getattr(quantizer_config(config.quantizer), "group_size", None) if adapter.name == "qalora" else None
    return parameter_counts(attach_meta(model, adapter, group_size=group))[0]


def matched_adapter(config: SweepConfig) -> tuple[dict, dict]:
    """(adapter node with the rank that matches config.match_budget, what was matched). AdaLoRA starts at init_r
    and prunes to rank: init_r is matched, rank kept at 2/3 of it (the 12 -> 8 of its YAML)."""
    from harness.config import adapter_config

    node = OmegaConf.to_container(OmegaConf.create(config.adapter), resolve=True)
    name, _, rank = config.match_budget.partition(":")
    target = trainable_count(config, adapter_config({"name": name, "rank": int(rank),
                                                          "targets": node["targets"]}))

    def with_rank(r: int) -> dict:
        return node | ({"init_r": r, "rank": max(1, 2 * r // 3)} if node["name"] == "adalora" else {"rank": r})

    counts: dict[int, int] = {}

    def count(r: int) -> int:
        if r not in counts:
            counts[r] = trainable_count(config, adapter_config(with_rank(r)))
        return counts[r]

    # LoRA, LoHa, AdaLoRA, QA-LoRA grow linearly with the rank: solve for it. LoKr does not (its Kronecker
    # factor turns full-rank past half its size): the powers of two up to 256 cover it.
    candidates = {1 << k for k in range(9)}
    slope = count(2) - count(1)
    if slope > 0:
        r = max(1, round((target - count(1)) / slope) + 1)
        candidates |= {max(1, r - 1), r, r + 1}
    best = min(candidates, key=lambda r: (abs(count(r) - target), r))
    return with_rank(best), {"budget_of": config.match_budget, "budget_params": target, "rank": best,
                             "trainable_params": count(best)}


def with_budget(config: SweepConfig) -> tuple[SweepConfig, dict]:
    """The config with its adapter's rank matched to the budget (unchanged when match_budget is null)."""
    if config.match_budget is None:
        return config, {}
    node, budget = matched_adapter(config)
    return dataclasses.replace(config, adapter=node), budget
