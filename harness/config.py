"""Config schemas and their registration with Hydra's ConfigStore.

Each quantizer's dataclass is stored as `quantizer/<name>_schema`; every YAML under experiments/quantizer/
names its schema in its defaults list, so Hydra type-checks the YAML's values against the dataclass, and
`quantizer_config()` turns the composed node into the validated dataclass (running its __post_init__).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from harness.registry import QUANTIZERS
from quantizers.base import QuantizerConfig

SOURCES = ("normal", "laplace", "student_t", "outliers", "tiny_llama")


@dataclass
class ErrorsConfig:
    """`python -m harness errors`: quantization error of weights under every configured quantizer."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    # label -> quantizer node; filled from experiments/quantizer/*.yaml by errors.yaml's defaults list
    quantizers: dict[str, Any] = field(default_factory=dict)
    numel: int = 1 << 20  # elements per synthetic tensor
    seed: int = 0
    output_dir: str = "results/errors"
    log_count: bool = True  # error histograms on a log count axis
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"errors.sources has unknown {unknown}; accepted sources: {list(SOURCES)}")
        if self.numel < 4096:
            raise ValueError(f"errors.numel={self.numel} is too small for stable statistics; use at least 4096")
        bad = [f for f in self.formats if f not in ("png", "pdf", "svg")]
        if bad:
            raise ValueError(f"errors.formats has {bad}; accepted: png, pdf, svg")


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
    cs.store(name="errors_schema", node=ErrorsConfig)
    _registered = True


def quantizer_config(node: DictConfig | dict[str, Any]) -> QuantizerConfig:
    """A composed quantizer node -> its validated dataclass (raises naming the field and the fix)."""
    node = OmegaConf.create(node) if isinstance(node, dict) else node
    name = node.get("name")
    if name is None:
        raise ValueError(f"quantizer config {OmegaConf.to_yaml(node)!r} has no `name`; set name to one of {QUANTIZERS.names()}")
    schema = OmegaConf.structured(QUANTIZERS.get(name))
    return OmegaConf.to_object(OmegaConf.merge(schema, node))
