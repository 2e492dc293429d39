"""`train.*` and the train command's schema: what a fine-tuning run may be asked to do, checked field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from harness.config import validated
from harness.data.corpus import SPLITS
from harness.device import check_compute_dtype, check_device
from harness.models.quantize import MODULE_KINDS

OPTIMIZERS = ("auto", "adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")
SCHEDULERS = ("cosine", "linear", "constant")  # each after the linear warm-up of warmup_ratio



@dataclass
class TrainSettings:
    """`train.*` knobs."""

    steps: int = 30  # optimizer steps; 0: no fine-tuning, the quantized base is evaluated only
    batch_size: int = 4  # sequences per micro-batch
    seq_len: int = 128  # tokens per sequence (packed blocks of the train split)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # share of the steps spent warming the learning rate up from 0
    # after the warm-up: cosine decay to 0, linear decay to 0, or constant at lr (what a bare PEFT loop or a
    # paper without a schedule used)
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0  # 0: no clipping
    optimizer: str = "auto"  # auto: paged_adamw_32bit on CUDA (bitsandbytes), adamw on the CPU
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_tokens: int = 4096  # validation tokens scored before / after / merged (0: the whole split)
    # window of the perplexity evaluation; None: the smaller of 1024 and the model's maximum positions
    eval_context: int | None = None
    eval_split: str = "validation"
    # forgetting (PEFT's method comparison): the change of loss on held-out text the fine-tuning did not target,
    # its first forgetting_tokens tokens (0: not measured); the text: forgetting_path (a plain-text file), else
    # forgetting_split of the run's corpus (None: the split neither trained on nor evaluated, i.e. test)
    forgetting_tokens: int = 2048
    forgetting_split: str | None = None
    forgetting_path: str | None = None
    # lm-eval tasks (local, built, or lm-eval's registry, e.g. [austen_cloze] or [arc_easy]) scored before
    # fine-tuning, after it and after merging, as `eval` scores them: metrics <task>/<metric>_before, _after and
    # _merged (e.g. austen_cloze/acc_after), every item's result in items.json / the sweep record
    tasks: list[str] = field(default_factory=list)
    task_limit: int | None = None  # items per task (None: all)
    task_batch_size: int = 16  # packed rows per forward pass, as eval's task_batch_size
    num_fewshot: int = 0  # examples before each task item, as eval's num_fewshot (0: zero-shot)
    task_datasets: dict[str, str] = field(default_factory=dict)  # registry task -> local dataset copy, as eval's
    progress: bool = True  # a progress bar with loss, learning rate and tokens/s

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_context"):
            value = getattr(self, name)
            if name == "eval_context" and value is None:
                continue
            if not isinstance(value, int) or value < (0 if name == "steps" else 1):
                zero = " (steps=0: evaluate the quantized base only)" if name == "steps" else ""
                raise ValueError(f"train.{name}={value!r} is not accepted; use a positive integer{zero}")
        if not self.lr > 0:
            raise ValueError(f"train.lr={self.lr!r} is not accepted; use a positive learning rate (e.g. 3e-4)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio={self.warmup_ratio!r} is not accepted; use a value in [0, 1)")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("train.max_grad_norm and train.weight_decay must be >= 0")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"train.scheduler={self.scheduler!r} is not accepted; use one of {list(SCHEDULERS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer={self.optimizer!r} is not accepted; use one of {list(OPTIMIZERS)}")
        if self.eval_tokens < 0:
            raise ValueError(f"train.eval_tokens={self.eval_tokens} must be >= 0 (0: the whole split)")
        if self.task_limit is not None and (not isinstance(self.task_limit, int) or self.task_limit < 1):
            raise ValueError(f"train.task_limit={self.task_limit!r} is not accepted; use a positive integer or null")
        from harness.evaluation.config import check_task_fields

        check_task_fields(self.num_fewshot, self.task_datasets, "train.")
        if self.forgetting_tokens < 0:
            raise ValueError(f"train.forgetting_tokens={self.forgetting_tokens} must be >= 0 (0: not measured)")
        if self.forgetting_split is not None and self.forgetting_split not in ("validation", "test"):
            raise ValueError(f"train.forgetting_split={self.forgetting_split!r} is not accepted; use validation or "
                             "test (train is what the adapter learns from), or null for the one not evaluated")
        if self.forgetting_path is not None:
            from pathlib import Path

            if not Path(self.forgetting_path).expanduser().is_file():
                raise FileNotFoundError(f"train.forgetting_path={self.forgetting_path!r} is not a file; give a "
                                        "plain-text file of held-out text, or null to use a split of the corpus")
        if self.eval_split not in SPLITS:
            raise ValueError(f"train.eval_split={self.eval_split!r} is not accepted; use validation, test or train")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


@dataclass
class TrainConfig:
    """`python -m harness train [model=] [quantizer=] [adapter=] [train.*=] [output_dir=DIR]`."""

    model: Any = None  # model/*.yaml
    data: Any = None  # data/*.yaml
    quantizer: Any = None  # quantizer/*.yaml (quantizer=none: the unquantized base)
    adapter: Any = None  # adapter/*.yaml
    train: TrainSettings = field(default_factory=TrainSettings)
    module: str = "auto"  # auto | harness | bitsandbytes: which layer holds the quantized weights
    device: str = "auto"  # auto: CUDA when present, else CPU
    # auto: bf16 where the device computes it natively, else fp32 (fp16 on old GPUs); a quantizer's own explicit
    # compute_dtype takes precedence over this one
    compute_dtype: str = "auto"
    merge: bool = True  # merge the adapter after training and evaluate the merged model
    output_dir: str | None = None  # None: results/train/<model>/<quantizer>-<adapter>-r<rank>

    def __post_init__(self) -> None:
        if self.module not in MODULE_KINDS:
            raise ValueError(f"module={self.module!r} is not accepted; use one of {list(MODULE_KINDS)}")
        check_device(self.device)
        check_compute_dtype(self.compute_dtype)


def train_config(node) -> TrainConfig:
    """A composed train (or sweep) node -> TrainConfig, validated (a mistake raises naming the field)."""
    from omegaconf import OmegaConf

    return TrainConfig(model=node.model, data=node.data, quantizer=node.quantizer, adapter=node.adapter,
                       train=validated(TrainSettings, node.train), module=node.module, device=node.device,
                       compute_dtype=node.compute_dtype, merge=node.merge,
                       output_dir=OmegaConf.select(node, "output_dir"))


def resolve_optimizer(name: str, device: torch.device) -> str:
    """`train.optimizer=auto` -> bitsandbytes' paged AdamW 32-bit on CUDA (QLoRA's), AdamW on the CPU."""
    if name != "auto":
        return name
    return "paged_adamw_32bit" if device.type == "cuda" else "adamw"
