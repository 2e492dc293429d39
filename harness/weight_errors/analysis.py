"""Weight-quantization error: what each quantizer does to the weights of every source, and what theory predicts.

`expected_mse` is the theory the empirical figures are checked against: the mean squared error of a
blockwise-absmax code on iid N(0, 1) weights, by numerical integration.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import integrate, special

from harness.registry import METRICS
from harness.weight_errors.config import ErrorsConfig
from harness.weight_errors.sources import SOURCES
from quantizers.base import QuantizedTensor, Quantizer, blockwise_absmax
from quantizers.codebook import CodebookQuantizer

# The figures sample this many elements per source: smooth log-count tails, yet quick to plot.
SAMPLES_PER_SOURCE = 200_000


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
