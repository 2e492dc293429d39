"""Error metrics between a weight and its dequantized copy, registered in METRICS.

Each metric takes (w, w_hat) as float tensors of the same shape and returns a float. Elementwise work stays in
the inputs' dtype (a float32 difference of two float32 weights is exact or within one rounding of the error
itself), and every sum accumulates in float64 so that a tiny error on a large tensor does not vanish.
"""

from __future__ import annotations

import math

import torch

from harness.registry import METRICS


def _err(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    return w_hat.float() - w.float()


def _sum_sq(x: torch.Tensor) -> float:
    return x.float().square().sum(dtype=torch.float64).item()


@METRICS.register("mse", "mean squared error between weight and dequantized weight")
def mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return _sum_sq(_err(w, w_hat)) / w.numel()


@METRICS.register("rmse", "root mean squared error")
def rmse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return math.sqrt(mse(w, w_hat))


@METRICS.register("max_abs_error", "largest absolute elementwise error")
def max_abs_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return _err(w, w_hat).abs().max().item()


@METRICS.register("sqnr_db", "signal-to-quantization-noise ratio, 10 log10(sum w^2 / sum (w - w_hat)^2), in dB")
def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    noise = _sum_sq(_err(w, w_hat))
    signal = _sum_sq(w)
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


@METRICS.register("rel_frobenius", "relative Frobenius error ||w - w_hat||_F / ||w||_F")
def rel_frobenius(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    norm = math.sqrt(_sum_sq(w))
    return math.sqrt(_sum_sq(_err(w, w_hat))) / norm if norm else math.inf
