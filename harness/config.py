"""Config schemas and their registration with Hydra's ConfigStore.

Each quantizer's dataclass is stored as `quantizer/<name>_schema`; every YAML under experiments/quantizer/
names its schema in its defaults list, so Hydra type-checks the YAML's values against the dataclass, and
`quantizer_config()` turns the composed node into the validated dataclass (running its __post_init__).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from harness.registry import ADAPTERS, QUANTIZERS
from quantizers.base import QuantizerConfig

SOURCES = ("normal", "laplace", "student_t", "outliers", "tiny_llama", "model")


@dataclass
class ErrorsConfig:
    """`python -m harness errors`: quantization error of weights under every configured quantizer."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    model: Any = None  # a model/*.yaml node, read by the `model` source (default: the embedded SmolLM2-135M)
    # label -> quantizer node; filled from experiments/quantizer/*.yaml by errors.yaml's defaults list
    quantizers: dict[str, Any] = field(default_factory=dict)
    numel: int = 1 << 20  # elements per synthetic tensor
    synthetic_cols: int = 4096  # synthetic tensors are (numel // synthetic_cols, synthetic_cols)
    student_t_df: float = 3.0  # heavy tails: the 4th moment is infinite for df <= 4
    outlier_fraction: float = 0.001  # `outliers` source: share of entries replaced by outliers
    outlier_magnitude: float = 6.0  # outliers are +-[m, 2m] (LLM.int8 calls |x| >= 6 an outlier)
    tiny_llama_layers: int = 4  # depth of the tiny_llama source (hidden 256: ~0.85M weights per layer)
    seed: int = 0
    output_dir: str = "results/errors"
    log_count: bool = True  # error histograms on a log count axis
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"errors.sources has unknown {unknown}; accepted sources: {list(SOURCES)}")
        if not self.sources:
            raise ValueError(f"errors.sources is empty; choose some of {list(SOURCES)}")
        if self.numel < 4096:
            raise ValueError(f"errors.numel={self.numel} is too small for stable statistics; use at least 4096")
        if self.synthetic_cols < 1 or self.numel % self.synthetic_cols:
            raise ValueError(
                f"errors.numel={self.numel} must be a multiple of errors.synthetic_cols={self.synthetic_cols}"
            )
        if self.tiny_llama_layers < 1:
            raise ValueError(f"errors.tiny_llama_layers={self.tiny_llama_layers} must be >= 1")
        if self.student_t_df <= 2:
            raise ValueError(f"errors.student_t_df={self.student_t_df} must be > 2 (the variance is infinite below)")
        if not 0 < self.outlier_fraction < 1 or self.outlier_magnitude <= 0:
            raise ValueError(
                f"errors.outlier_fraction={self.outlier_fraction} must be in (0, 1) and "
                f"errors.outlier_magnitude={self.outlier_magnitude} > 0"
            )
        bad = [f for f in self.formats if f not in ("png", "pdf", "svg")]
        if bad:
            raise ValueError(f"errors.formats has {bad}; accepted: png, pdf, svg")


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

    model: Any = None  # a model/*.yaml node (harness.models.ModelConfig)
    data: Any = None  # a data/*.yaml node (harness.data.DataConfig)
    quantizers: dict[str, Any] = field(default_factory=dict)  # label -> quantizer node; empty: full precision only
    module: str = "auto"  # auto | harness | bitsandbytes: which linear module holds quantized weights
    device: str = "auto"  # auto: CUDA when present, else CPU
    compute_dtype: str = "auto"  # for quantizers whose compute_dtype is auto: bf16 where native, else fp32
    split: str = "test"
    context_length: int = 1024
    stride: int | None = None  # None: = context_length (each token scored once, lm-eval's windows)
    max_tokens: int = 16384  # 0: the whole split
    tasks: list[str] = field(default_factory=list)  # lm-eval task names from experiments/lm_eval_tasks/
    task_limit: int | None = None
    # lm-eval loglikelihood requests: packed rows per forward pass (harness.packed_scoring); 1: lm-eval's own
    # one-request-at-a-time path, the reference. On a CPU a pass also stops at 1,024 tokens, so 16 binds only
    # for short rows; on a GPU there is no token cap.
    task_batch_size: int = 16
    output_dir: str = "results/eval"
    paper: PaperConfig | None = None

    def __post_init__(self) -> None:
        if self.module not in ("auto", "harness", "bitsandbytes"):
            raise ValueError(f"eval.module={self.module!r} is not accepted; use auto, harness or bitsandbytes")
        from harness.device import check_compute_dtype, check_device

        check_device(self.device)
        check_compute_dtype(self.compute_dtype)
        if self.split not in ("train", "validation", "test"):
            raise ValueError(f"eval.split={self.split!r} is not accepted; use train, validation or test")
        if self.context_length < 2:
            raise ValueError(f"eval.context_length={self.context_length} must be at least 2")
        if self.stride is not None and not 1 <= self.stride <= self.context_length:
            raise ValueError(f"eval.stride={self.stride} must be between 1 and context_length={self.context_length}")
        if self.task_batch_size < 1:
            raise ValueError(f"eval.task_batch_size={self.task_batch_size} must be at least 1 "
                             "(1: lm-eval's own unbatched scoring; 16: the default)")
        if self.max_tokens < 0:
            raise ValueError(f"eval.max_tokens={self.max_tokens} must be >= 0 (0 evaluates the whole split)")


EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
_registered = False


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    for entry in QUANTIZERS:
        cs.store(group="quantizer", name=f"{entry.name}_schema", node=entry.obj)
    for entry in ADAPTERS:
        cs.store(group="adapter", name=f"{entry.name}_schema", node=entry.obj)
    cs.store(name="errors_schema", node=ErrorsConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    from harness import data, models  # their schemas live beside the code that reads them

    models.store_schemas(cs)
    from harness.train import TrainConfig

    cs.store(name="train_schema", node=TrainConfig)
    from harness.runner import SweepConfig

    cs.store(name="sweep_schema", node=SweepConfig)
    from harness.memory_model import MemoryConfig

    cs.store(name="memory_schema", node=MemoryConfig)
    cs.store(group="data", name="data_schema", node=data.DataConfig)
    _registered = True


def default_cache_dir() -> Path:
    """Where fetched corpora and converted models live: $HARNESS_CACHE, else ~/.cache/quant-harness."""
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "quant-harness").expanduser()


def validated(schema: type, node: Any) -> Any:
    """A composed node (DictConfig, dict or dataclass) -> the `schema` dataclass, its __post_init__ run."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def adapter_config(node: DictConfig | dict[str, Any]):
    """A composed adapter node -> its validated AdapterConfig dataclass."""
    node = OmegaConf.create(node) if isinstance(node, dict) else node
    name = node.get("name")
    if name is None:
        raise ValueError(f"adapter config has no `name`; set adapter to one of {ADAPTERS.names()}")
    return validated(ADAPTERS.get(name), node)


def quantizer_config(node: DictConfig | dict[str, Any]) -> QuantizerConfig:
    """A composed quantizer node -> its validated dataclass (raises naming the field and the fix)."""
    node = OmegaConf.create(node) if isinstance(node, dict) else node
    name = node.get("name")
    if name is None:
        raise ValueError(f"quantizer config {OmegaConf.to_yaml(node)!r} has no `name`; set name to one of {QUANTIZERS.names()}")
    return validated(QUANTIZERS.get(name), node)
