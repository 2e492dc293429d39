"""`python -m harness sensitivity`'s schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.data.corpus import SPLITS
from harness.models.quantize import MODULE_KINDS
from harness.models.sources import DEFAULT_CONTEXT  # a stride longer than this fits no default window
from harness.report.formats import check_formats

GRANULARITIES = ("coarse", "layer")  # coarse: each block and each projection type; layer: also each layer alone

KINDS = ("block", "projection", "layer")



FULL_PRECISION = "full precision"


@dataclass
class SensitivityConfig:
    """`python -m harness sensitivity`: perplexity increase per quantized layer group, and a mixed-precision plan."""

    model: Any = None  # a model/*.yaml node (harness.models.sources.ModelConfig)
    data: Any = None  # a data/*.yaml node (harness.data.corpus.DataConfig)
    quantizer: Any = None  # the 4-bit quantizer whose sensitivity is measured (a quantizer/*.yaml node)
    keep_8bit: Any = None  # the quantizer of the groups the mixed-precision plan keeps (a quantizer/*.yaml node)
    granularity: str = "coarse"  # coarse: blocks + projection types; layer: also every linear layer alone
    top_k: list[int] = field(default_factory=lambda: [1, 2, 4])  # groups kept at 8 bits, one plan per k
    mixed_by: list[str] = field(default_factory=lambda: ["block", "projection"])  # groupings the plans rank
    control: bool = True  # also keep the k *least* sensitive groups at 8 bits: what the ranking is worth
    module: str = "auto"  # auto | harness | bitsandbytes: which linear module holds quantized weights
    device: str = "auto"
    compute_dtype: str = "auto"  # for quantizers whose compute_dtype is auto: bf16 where native, else fp32
    split: str = "validation"  # where groups are ranked and the plans chosen
    heldout_split: str | None = "test"  # where the plans are measured again; None: not measured elsewhere
    context_length: int | None = None  # None: the smaller of 1024 and the model's maximum positions
    stride: int | None = None  # None: = context_length
    max_tokens: int = 2048  # 0: the whole split
    output_dir: str = "results/sensitivity"
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])

    def __post_init__(self) -> None:
        from harness.device import check_compute_dtype, check_device

        if self.granularity not in GRANULARITIES:
            raise ValueError(f"sensitivity.granularity={self.granularity!r} is not accepted; use coarse (each block "
                             "and each projection type) or layer (also every linear layer alone)")
        if not self.top_k or any(not isinstance(k, int) or k < 1 for k in self.top_k):
            raise ValueError(f"sensitivity.top_k={list(self.top_k)} must be a non-empty list of integers >= 1 "
                             "(how many of the most sensitive groups each plan keeps at 8 bits), e.g. [1,2,4]")
        if len(set(self.top_k)) != len(self.top_k):
            raise ValueError(f"sensitivity.top_k={list(self.top_k)} repeats a value; list each k once")
        allowed = kinds_of(self.granularity)
        bad = [kind for kind in self.mixed_by if kind not in allowed]
        if bad:
            hint = " (layer needs granularity=layer)" if "layer" in bad else ""
            raise ValueError(f"sensitivity.mixed_by={list(self.mixed_by)} has {bad}; with granularity="
                             f"{self.granularity} use some of {list(allowed)}{hint}")
        if self.module not in MODULE_KINDS:
            raise ValueError(f"sensitivity.module={self.module!r} is not accepted; use auto, harness or "
                             "bitsandbytes")
        check_device(self.device)
        check_compute_dtype(self.compute_dtype)
        if self.split not in SPLITS:
            raise ValueError(f"sensitivity.split={self.split!r} is not accepted; use one of {list(SPLITS)}")
        if self.heldout_split is not None and self.heldout_split not in SPLITS:
            raise ValueError(f"sensitivity.heldout_split={self.heldout_split!r} is not accepted; use one of "
                             f"{list(SPLITS)}, or null to measure the plans on `split` only")
        if self.heldout_split == self.split:
            raise ValueError(f"sensitivity.heldout_split={self.heldout_split!r} is the split the plans are chosen "
                             "on; use another split, or null to skip the held-out measurement")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"sensitivity.context_length={self.context_length} must be at least 2 (or null: the "
                             "smaller of 1024 and the model's maximum positions)")
        if self.stride is not None and not 1 <= self.stride <= (self.context_length or DEFAULT_CONTEXT):
            raise ValueError(f"sensitivity.stride={self.stride} must be between 1 and context_length="
                             f"{self.context_length or f'{DEFAULT_CONTEXT} (the largest default window)'}")
        if self.max_tokens < 0:
            raise ValueError(f"sensitivity.max_tokens={self.max_tokens} must be >= 0 (0 evaluates the whole "
                             "split; about 40 groups are evaluated, so keep it a few thousand on a CPU)")
        check_formats(self.formats, "sensitivity.formats")


def kinds_of(granularity: str) -> tuple[str, ...]:
    return ("block", "projection", "layer") if granularity == "layer" else ("block", "projection")
