"""`python -m harness eval`'s schema, and the published table a paper config prints beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.data.corpus import SPLITS
from harness.models.quantize import MODULE_KINDS
from harness.models.sources import DEFAULT_CONTEXT  # a stride longer than this fits no default window


@dataclass
class PaperConfig:
    """A published table to print beside ours: label -> published value of `metric`."""

    name: str = "?"
    title: str = ""
    source: str = ""  # citation and what the published figures are (dataset, models, averaging)
    metric: str = "perplexity"
    lower_is_better: bool = True
    published: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # our label -> the paper's name for it


@dataclass
class EvalConfig:
    """`python -m harness eval`: perplexity (and lm-eval tasks) in full precision and under each quantizer."""

    model: Any = None  # a model/*.yaml node (harness.models.sources.ModelConfig)
    data: Any = None  # a data/*.yaml node (harness.data.corpus.DataConfig)
    quantizers: dict[str, Any] = field(default_factory=dict)  # label -> quantizer node; empty: full precision only
    module: str = "auto"  # auto | harness | bitsandbytes: which linear module holds quantized weights
    device: str = "auto"  # auto: CUDA when present, else CPU
    compute_dtype: str = "auto"  # for quantizers whose compute_dtype is auto: bf16 where native, else fp32
    split: str = "test"
    context_length: int | None = None  # None: the smaller of 1024 and the model's maximum positions
    stride: int | None = None  # None: = context_length (each token scored once, lm-eval's windows)
    max_tokens: int = 16384  # 0: the whole split
    # lm-eval tasks by name: local (experiments/lm_eval_tasks/) or lm-eval's registry (arc_easy, mmlu, ...)
    tasks: list[str] = field(default_factory=list)
    task_limit: int | None = None  # items per task (None: all)
    num_fewshot: int = 0  # examples before each item (0: zero-shot); refused for a task with no split to draw from
    # registry task -> a local copy of its dataset (a folder datasets.load_dataset(path, name) reads, e.g. an
    # `hf download --repo-type dataset` snapshot), for use offline: +task_datasets.arc_easy=/data/ai2_arc
    task_datasets: dict[str, str] = field(default_factory=dict)
    # lm-eval loglikelihood requests: packed rows per forward pass (harness.evaluation.packed_scoring); 1: lm-eval's own
    # one-request-at-a-time path, the reference. On a CPU a pass also stops at 1,024 tokens, so 16 binds only
    # for short rows; on a GPU there is no token cap.
    task_batch_size: int = 16
    output_dir: str = "results/eval"
    paper: PaperConfig | None = None

    def __post_init__(self) -> None:
        if self.module not in MODULE_KINDS:
            raise ValueError(f"eval.module={self.module!r} is not accepted; use auto, harness or bitsandbytes")
        from harness.device import check_compute_dtype, check_device

        check_device(self.device)
        check_compute_dtype(self.compute_dtype)
        if self.split not in SPLITS:
            raise ValueError(f"eval.split={self.split!r} is not accepted; use train, validation or test")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"eval.context_length={self.context_length} must be at least 2 (or null: the smaller "
                             "of 1024 and the model's maximum positions)")
        if self.stride is not None and not 1 <= self.stride <= (self.context_length or DEFAULT_CONTEXT):
            raise ValueError(f"eval.stride={self.stride} must be between 1 and context_length="
                             f"{self.context_length or f'{DEFAULT_CONTEXT} (the largest default window)'}")
        if self.task_batch_size < 1:
            raise ValueError(f"eval.task_batch_size={self.task_batch_size} must be at least 1 "
                             "(1: lm-eval's own unbatched scoring; 16: the default)")
        check_task_fields(self.num_fewshot, self.task_datasets, "eval.")
        if self.max_tokens < 0:
            raise ValueError(f"eval.max_tokens={self.max_tokens} must be >= 0 (0 evaluates the whole split)")


def check_task_fields(num_fewshot, task_datasets, prefix: str) -> None:
    """num_fewshot and task_datasets as eval and train.* take them (which tasks they fit is checked with the
    tasks: harness.evaluation.tasks.resolve_tasks)."""
    if not isinstance(num_fewshot, int) or isinstance(num_fewshot, bool) or num_fewshot < 0:
        raise ValueError(f"{prefix}num_fewshot={num_fewshot!r} is not accepted; use 0 (zero-shot) or a positive "
                         "number of examples")
    for task, path in task_datasets.items():
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"{prefix}task_datasets.{task}={path!r} is not accepted; give the path of a local copy "
                             "of the task's dataset (a folder datasets.load_dataset(path, name) reads)")
