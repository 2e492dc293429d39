"""A sweep cell's schema (the train schema plus `sweep.*`, `logger`, `match_budget`, `paper`) and its identity:
the hash over every field that changes its result.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import quantizer_label, validated
from harness.device import resolve_device
from harness.records import config_hash
from harness.training.config import TrainConfig, train_config

LOGGERS = ("none", "tensorboard")

# composed keys that do not change a cell's result, left out of its hash
NOT_IDENTITY = ("hydra", "sweep", "logger", "output_dir", "paper")
# train.* knobs added after sweeps were first recorded, left out of the hash at their default (which reproduces
# what cells did before the knob existed), so a resumed sweep finds its finished cells
AT_DEFAULT_LEFT_OUT = {"scheduler": "cosine", "forgetting_tokens": 2048, "forgetting_split": None,
                      "forgetting_path": None, "num_fewshot": 0, "task_datasets": {}}


@dataclass
class SweepSettings:
    """`sweep.*` knobs."""

    name: str = "custom"  # the grid's name; the default output_dir is results/sweeps/<name>
    rerun_failed: bool = False  # run again the cells whose record says failed (finished cells are always kept)
    reference: bool = True  # also evaluate the full-precision model (once per model): perplexity_full_precision
    report: bool = True  # after collecting: tables/, figures/ and report.md (python -m harness table, plot)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"sweep.name={self.name!r} is not accepted; use letters, digits, '_', '.', '-'")


@dataclass
class SweepConfig(TrainConfig):
    """`python -m harness sweep`: a train config per cell, plus the sweep's own knobs."""

    sweep: SweepSettings = field(default_factory=SweepSettings)
    logger: str = "none"  # none | tensorboard (event files in each cell's tensorboard/ folder)
    # "lora:8": every cell's adapter gets the rank whose trainable parameters come closest to LoRA r=8's on the
    # same targets (counted on the meta device); null: ranks as configured
    match_budget: str | None = None
    # a paper reproduction (experiments/paper/*.yaml run through the sweep): what harness.sweep.papers prints
    # beside our table; it does not change any cell
    paper: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.paper is not None:
            from harness.sweep.papers import SweepPaper

            validated(SweepPaper, self.paper)
        if self.match_budget is not None:
            name, _, rank = self.match_budget.partition(":")
            from harness.registry import ADAPTERS

            if not rank.isdigit() or int(rank) < 1 or name not in ADAPTERS.names():
                raise ValueError(f"match_budget={self.match_budget!r} is not accepted; write ADAPTER:RANK with an "
                                 f"adapter of {ADAPTERS.names()}, e.g. lora:8 (the trainable parameters of LoRA r=8)")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger={self.logger!r} is not accepted; use one of {list(LOGGERS)}")
        if self.logger == "tensorboard":
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ValueError("logger=tensorboard needs the tensorboard package: pip install tensorboard")


def sweep_config(node: DictConfig) -> SweepConfig:
    """A composed sweep node -> SweepConfig, validated."""
    base = train_config(node)
    config = SweepConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(TrainConfig)},
                         sweep=validated(SweepSettings, node.sweep), logger=node.logger,
                         match_budget=OmegaConf.select(node, "match_budget"),
                         paper=OmegaConf.select(node, "paper"))
    return config


def identity(node: DictConfig) -> dict:
    """What a cell's hash covers: the composed config, resolved, less what does not change its result."""
    tree = OmegaConf.to_container(node, resolve=True)
    for key in NOT_IDENTITY:
        tree.pop(key, None)
    train = tree.get("train", {})
    train.pop("progress", None)
    if train.get("eval_context", 0) is None:  # the default: 1024 capped at the model's positions, as before it was
        train["eval_context"] = 1024          # null; the same evaluation keeps the same hash
    for key, default in AT_DEFAULT_LEFT_OUT.items():  # knobs added later: at their default, older cells keep theirs
        if key in train and train[key] == default:
            train.pop(key)
    if not train.get("tasks"):  # no tasks: their settings change nothing, and older cells keep their hashes
        for key in ("tasks", "task_limit", "task_batch_size", "num_fewshot", "task_datasets"):
            train.pop(key, None)
    for part in ("model", "data"):
        tree.get(part, {}).pop("cache_dir", None)  # where files are cached, not what they hold
    tree["device"] = resolve_device(tree["device"]).type  # auto: what it means on this machine
    return tree


def cell_hash(node: DictConfig) -> str:
    return config_hash(identity(node))


def describe(config: SweepConfig) -> dict:
    """The fields every table wants as columns, whatever was swept."""
    from harness.config import adapter_config, quantizer_config
    from harness.models.sources import model_config

    q, a = quantizer_config(config.quantizer), adapter_config(config.adapter)
    return {"model": model_config(config.model).name, "quantizer": quantizer_label(q), "adapter": a.name,
            "rank": a.rank, "targets": ",".join(a.targets), "seed": config.train.seed,
            "steps": config.train.steps, "lr": config.train.lr}
