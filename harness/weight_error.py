"""Weight-quantization error: where weights come from, what each quantizer does to them, what theory predicts.

A source loads a list of (tensor_name, weight) pairs. Synthetic ones are 2-D (rows x cols) draws from one distribution;
model sources walk a module's nn.Linear layers with `model_weights`, so a real model is one more entry in
SOURCES whose loader builds or loads the model and returns `list(model_weights(model))`.

`expected_mse` is the theory the empirical figures are checked against: the mean squared error of a
blockwise-absmax code on iid N(0, 1) weights, by numerical integration.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import integrate, special
from torch import nn

from harness.config import ErrorsConfig
from harness.registry import METRICS
from quantizers.base import QuantizedTensor, Quantizer, blockwise_absmax
from quantizers.codebook import CodebookQuantizer

# The figures sample this many elements per source: smooth log-count tails, yet quick to plot.
SAMPLES_PER_SOURCE = 200_000

# ---------------------------------------------------------------- sources


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
    from harness.models import ModelConfig, load_model  # heavy import, only when this source is used

    cfg = ModelConfig(name="tiny-llama", source="tiny", arch="llama", hidden_size=256, intermediate_size=704,
                      num_layers=layers, num_heads=4, seed=seed)
    return load_model(cfg)[0]


def configured_model(cfg: ErrorsConfig) -> nn.Module:
    """The model named by cfg.model (default: the embedded SmolLM2-135M), as loaded."""
    from harness.models import load_model, model_config

    return load_model(model_config(cfg.model))[0]


def synthetic(distribution: str, cfg: ErrorsConfig) -> torch.Tensor:
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
    load: Callable[[ErrorsConfig], list[tuple[str, torch.Tensor]]]

    def describe(self, cfg: ErrorsConfig) -> str:
        return self.description.format(cfg=cfg)


def _synthetic_source(name: str, description: str) -> Source:
    def load(cfg: ErrorsConfig) -> list[tuple[str, torch.Tensor]]:
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

# ---------------------------------------------------------------- measurement


def measure(w: torch.Tensor, qt: QuantizedTensor, w_hat: torch.Tensor | None = None) -> dict[str, float]:
    """Every registered metric between w and qt's dequantized copy (w_hat, if already at hand), plus qt's
    storage in bits per parameter."""
    w_hat = qt.dequantize(torch.float32) if w_hat is None else w_hat
    out = {entry.name: entry.obj(w, w_hat) for entry in METRICS}
    out["bits_per_param"] = qt.bits_per_param
    return out


@dataclass
class Analysis:
    """What `analyse` measured. records: one dict per (source, tensor, quantizer, metric)."""

    records: list[dict] = field(default_factory=list)
    # (source, quantizer label) -> samples of error / std(w), one array per tensor
    errors: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    # (source, block size) -> samples of w / block absmax, one array per tensor
    normalised: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    theory: list[dict] = field(default_factory=list)  # expected vs empirical MSE on N(0, 1)
    skipped: list[str] = field(default_factory=list)  # "source/tensor/quantizer: reason"


def analyse(cfg: ErrorsConfig, quantizers: dict[str, Quantizer]) -> Analysis:
    """Quantize every tensor of every source with every quantizer (label -> Quantizer) and measure it."""
    result = Analysis()
    block_sizes = sorted(
        {q.config.block_size for q in quantizers.values() if isinstance(q, CodebookQuantizer)}
    )
    for source_name in cfg.sources:
        source = SOURCES[source_name]
        tensors = source.load(cfg)
        total = sum(w.numel() for _, w in tensors)
        g = torch.Generator().manual_seed(cfg.seed)
        for tensor_name, w in tensors:
            w = w.float()
            k = max(1, round(w.numel() * min(1.0, SAMPLES_PER_SOURCE / total)))
            pick = torch.randperm(w.numel(), generator=g)[:k]  # the same elements for every quantizer
            std = w.std().item() or 1.0
            for b in block_sizes:
                blocks, absmax = blockwise_absmax(w, b)
                values = (blocks / absmax.clamp(min=1e-38).unsqueeze(1)).reshape(-1)[pick]
                result.normalised[(source_name, b)].append(values.numpy())
            for label, quantizer in quantizers.items():
                try:
                    qt = quantizer.quantize(w, name=f"{source_name}/{tensor_name}")
                except ValueError as e:  # e.g. intk on a row length its group size does not divide
                    result.skipped.append(f"{source_name}/{tensor_name}/{label}: {e}")
                    continue
                key = {
                    "source": source_name,
                    "tensor": tensor_name,
                    "quantizer": label,
                    "format": qt.format,
                    "block_size": qt.block_size,
                    "double_quant": isinstance(qt.scale, QuantizedTensor),
                    "numel": w.numel(),
                }
                w_hat = qt.dequantize(torch.float32)
                metrics = measure(w, qt, w_hat)
                result.records += [{**key, "metric": m, "value": v} for m, v in metrics.items()]
                err = w_hat - w
                result.errors[(source_name, label)].append((err.reshape(-1)[pick] / std).numpy())
                if (
                    source_name == "normal"
                    and isinstance(quantizer, CodebookQuantizer)
                    and not key["double_quant"]
                ):
                    comparison = _theory(err, quantizer, metrics["mse"])
                    result.theory.append({**key, **comparison})
                    result.records.append(
                        {**key, "metric": "expected_mse", "value": comparison["expected_mse"]}
                    )
    return result


def _theory(err: torch.Tensor, quantizer: CodebookQuantizer, empirical: float) -> dict[str, float]:
    """expected_mse beside the measured one, with the standard error of the measurement (blocks are iid)."""
    b = quantizer.config.block_size
    per_block = err.double().reshape(-1)
    per_block = per_block[: per_block.numel() // b * b].reshape(-1, b).pow(2).mean(dim=1)
    stderr = per_block.std().item() / math.sqrt(per_block.numel())
    expected = expected_mse(quantizer.levels().double().numpy(), b)
    return {"expected_mse": expected, "empirical_mse": empirical, "stderr": stderr}


# ---------------------------------------------------------------- theory: expected MSE on N(0, 1) blocks


def conditional_sq_error(levels: np.ndarray, m: float) -> float:
    """integral over |x| <= m of (x - m q(x/m))^2 phi(x) dx, q = nearest of `levels` (sorted, in [-1, 1]).

    Piecewise between the decision midpoints, with closed-form moments of the standard normal on [a, b]:
    P = Phi(b) - Phi(a), E1 = phi(a) - phi(b), E2 = P + a phi(a) - b phi(b).
    """
    edges = m * np.concatenate(([-1.0], (levels[:-1] + levels[1:]) / 2, [1.0]))
    a, b, v = edges[:-1], edges[1:], m * levels
    pdf_a, pdf_b = np.exp(-a * a / 2) / math.sqrt(2 * math.pi), np.exp(-b * b / 2) / math.sqrt(2 * math.pi)
    p = special.ndtr(b) - special.ndtr(a)
    e1 = pdf_a - pdf_b
    e2 = p + a * pdf_a - b * pdf_b
    return float(np.sum(e2 - 2 * v * e1 + v * v * p))


def expected_mse(levels: np.ndarray, block_size: int) -> float:
    """Expected per-element MSE of blockwise absmax quantization onto `levels` for iid N(0, 1) weights.

    The block absmax M has density f(m) = B (2 Phi(m) - 1)^(B-1) 2 phi(m); given M = m, the max itself is
    exact and the other B - 1 values are iid N(0, 1) truncated to [-m, m]. So
        MSE = (B-1)/B * E_M[ E[(x - m q(x/m))^2 | |x| <= m] ]
            = (B-1)/B * integral f(m) / (2 Phi(m) - 1) * conditional_sq_error(m) dm,
    with (2 Phi(m) - 1) cancelled against f's power so small m never divides by ~0.
    levels: (K,) sorted distinct values in [-1, 1] that include -1 or 1 (the block max maps exactly).
    """
    levels = np.sort(np.asarray(levels, dtype=np.float64))
    b = block_size

    def integrand(m: float) -> float:
        two_phi_minus_1 = special.erf(m / math.sqrt(2))
        density = b * two_phi_minus_1 ** (b - 2) * 2 * math.exp(-m * m / 2) / math.sqrt(2 * math.pi)
        return density * conditional_sq_error(levels, m)

    # M of B normals sits near sqrt(2 ln B); P(M > 12) <= B P(|x| > 12) < 1e-28 for any B <= 4096
    peak = math.sqrt(2 * math.log(b))
    value, _ = integrate.quad(integrand, 0.0, 12.0, points=[peak], limit=200, epsabs=0.0, epsrel=1e-10)
    return (b - 1) / b * value
