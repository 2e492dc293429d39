"""`python -m harness eval`'s schema, and the published table a paper config prints beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.data.corpus import SPLITS
from harness.models.quantize import MODULE_KINDS


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
    tasks: list[str] = field(default_factory=list)  # lm-eval task names from experiments/lm_eval_tasks/
    task_limit: int | None = None
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
        if self.stride is not None and not 1 <= self.stride <= (self.context_length or self.stride):
            raise ValueError(f"eval.stride={self.stride} must be between 1 and context_length={self.context_length}")
        if self.task_batch_size < 1:
            raise ValueError(f"eval.task_batch_size={self.task_batch_size} must be at least 1 "
                             "(1: lm-eval's own unbatched scoring; 16: the default)")
        if self.max_tokens < 0:
            raise ValueError(f"eval.max_tokens={self.max_tokens} must be >= 0 (0 evaluates the whole split)")
