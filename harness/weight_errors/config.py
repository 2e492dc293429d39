"""`python -m harness errors`'s schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.report.formats import check_formats
from harness.weight_errors.sources import SOURCES


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
        check_formats(self.formats, "errors.formats")
