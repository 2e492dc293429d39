"""What every layer of the harness reads about configs: where experiments and caches live, a composed node turned
into its validated dataclass, and the quantizer and adapter config lookups (through the registry).

A leaf: it imports nothing of the harness but the registry. The commands' schemas live beside the code that reads
them; harness.cli registers them all with Hydra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.registry import ADAPTERS, QUANTIZERS
from quantizers.base import QuantizerConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


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


def quantizer_label(q) -> str:
    """nf4, nf4_dq, int3_g32, ...: a short unique name for output folders and tables."""
    if q.name == "intk":
        return f"int{q.bits}_g{q.group_size}"
    if getattr(q, "group_zero_points", False):  # gptq4_g64, awq3_g64, hqq2_g64: intk's format by another method
        return f"{q.name}{q.bits}_g{q.group_size}"
    return q.name + ("_dq" if getattr(q, "double_quant", False) else "")
