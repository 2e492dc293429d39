"""Error metrics between a weight and its dequantized copy, registered in METRICS.

Each metric takes (w, w_hat) as float tensors of the same shape and returns a float. They are computed in
float64 so that a tiny error on a large tensor does not vanish in float32 rounding.
"""

from __future__ import annotations

import math

import torch

from harness.registry import METRICS


def _err(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    return w_hat.double() - w.double()


@METRICS.register("mse", "mean squared error between weight and dequantized weight")
def mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return _err(w, w_hat).pow(2).mean().item()


@METRICS.register("rmse", "root mean squared error")
def rmse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return math.sqrt(mse(w, w_hat))


@METRICS.register("max_abs_error", "largest absolute elementwise error")
def max_abs_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return _err(w, w_hat).abs().max().item()


@METRICS.register("sqnr_db", "signal-to-quantization-noise ratio, 10 log10(sum w^2 / sum (w - w_hat)^2), in dB")
def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    noise = _err(w, w_hat).pow(2).sum().item()
    signal = w.double().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


@METRICS.register("rel_frobenius", "relative Frobenius error ||w - w_hat||_F / ||w||_F")
def rel_frobenius(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    norm = w.double().norm().item()
    return _err(w, w_hat).norm().item() / norm if norm else math.inf
