"""Where the weights of the errors command come from: synthetic draws (normal, Laplace, Student-t, outliers)
and the linear layers of models. A source loads a list of (tensor_name, weight) pairs; `cfg` is the ErrorsConfig.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def model_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every nn.Linear of `model` as (module name, detached weight (out_features, in_features))."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield name, module.weight.detach()


def tiny_llama(seed: int, layers: int = 4) -> nn.Module:
    """A randomly initialised Llama (hidden 256, `layers` blocks) built in-process (no files, no network).

    intermediate_size 704 (not Llama's 8/3 ratio, 688) is a multiple of 64, so every group size in
    experiments/quantizer/ divides each row of down_proj and no quantizer has to skip a layer.
    """
    from harness.models.sources import ModelConfig, load_model

    cfg = ModelConfig(name="tiny-llama", source="tiny", arch="llama", hidden_size=256, intermediate_size=704,
                      num_layers=layers, num_heads=4, seed=seed)
    return load_model(cfg)[0]


def configured_model(cfg) -> nn.Module:
    """The model named by cfg.model (default: the embedded SmolLM2-135M), as loaded."""
    from harness.models.sources import load_model, model_config

    return load_model(model_config(cfg.model))[0]


def synthetic(distribution: str, cfg) -> torch.Tensor:
    """(numel // synthetic_cols, synthetic_cols) float32 draws; unit variance except for `outliers`."""
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.numel // cfg.synthetic_cols, cfg.synthetic_cols)
    if distribution == "normal":
        return torch.randn(shape, generator=g)
    if distribution == "laplace":  # inverse CDF of a uniform draw; scale 1/sqrt(2) gives variance 1
        u = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
        return (-torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)).float()
    if distribution == "student_t":
        df = cfg.student_t_df
        t = torch.from_numpy(np.random.default_rng(cfg.seed).standard_t(df, size=shape))
        return (t * math.sqrt((df - 2) / df)).float()  # variance df / (df - 2) -> 1
    if distribution == "outliers":
        # N(0, 1) with a few isolated entries of magnitude in [m, 2m]: one sets its whole block's scale
        w = torch.randn(shape, generator=g)
        n = max(1, round(cfg.outlier_fraction * w.numel()))
        where = torch.randperm(w.numel(), generator=g)[:n]
        magnitude = cfg.outlier_magnitude * (1 + torch.rand(n, generator=g))
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        w.view(-1)[where] = sign * magnitude
        return w
    raise ValueError(f"unknown synthetic distribution {distribution!r}")


@dataclass(frozen=True)
class Source:
    name: str
    is_model: bool  # model sources get a per-layer SQNR figure
    description: str  # a format string over `cfg` (the ErrorsConfig), for the summary
    load: Callable[..., list[tuple[str, torch.Tensor]]]  # (cfg) -> weights

    def describe(self, cfg) -> str:
        return self.description.format(cfg=cfg)


def _synthetic_source(name: str, description: str) -> Source:
    def load(cfg) -> list[tuple[str, torch.Tensor]]:
        w = synthetic(name, cfg)
        return [(f"{w.shape[0]}x{w.shape[1]}", w)]

    return Source(name, False, description, load)


_SHAPE = "{cfg.numel} values as rows of {cfg.synthetic_cols}"

SOURCES: dict[str, Source] = {
    "normal": _synthetic_source("normal", "iid N(0, 1), " + _SHAPE),
    "laplace": _synthetic_source("laplace", "iid Laplace scaled to unit variance, " + _SHAPE),
    "student_t": _synthetic_source(
        "student_t",
        "iid Student-t with {cfg.student_t_df} degrees of freedom scaled to unit variance, " + _SHAPE,
    ),
    "outliers": _synthetic_source(
        "outliers",
        "N(0, 1) with a share {cfg.outlier_fraction} of entries replaced by "
        "+-[{cfg.outlier_magnitude}, 2 x {cfg.outlier_magnitude}], " + _SHAPE,
    ),
    "tiny_llama": Source(
        "tiny_llama",
        True,
        "every nn.Linear of a randomly initialised Llama (hidden 256, intermediate 704, "
        "{cfg.tiny_llama_layers} layers, byte-level vocabulary; weights ~ N(0, 0.02^2))",
        lambda cfg: list(model_weights(tiny_llama(cfg.seed, cfg.tiny_llama_layers))),
    ),
    "model": Source(
        "model",
        True,
        "every nn.Linear of the configured model {cfg.model.name} (source {cfg.model.source}; lm_head included)",
        lambda cfg: list(model_weights(configured_model(cfg))),
    ),
}
