"""HQQ's solver (Badri & Shaji 2023, "Half-Quadratic Quantization") as pure tensor functions, writing intk's format.

HQQ keeps intk's codes-and-grid form, w ~ (q - z) s with q = clamp(round(w / s + z), 0, 2^k - 1) per group of
`group_size` input features, and moves the zero point z (optionally also s) to minimise the lp error
sum |W - W_r|^p, p < 1, which spends less on outliers than least squares does. The problem is non-convex and
the rounding is not differentiable, so HQQ splits it half-quadratically with an auxiliary error W_e ~ W - W_r:

    W_q = clamp(round(W / s + z), 0, 2^k - 1)         the codes for the current (s, z)
    W_r = (W_q - z) s                                 the weight they rebuild
    W_e = shrink_p(W - W_r, beta)                     sign(x) max(|x| - |x|^(p-1) / beta, 0): generalized soft-
                                                      thresholding, HQQ's closed form for the prox of |.|^p / beta
    z   = mean over the group of (W_q - (W - W_e) / s)  the least-squares zero point given W_q and W_e
    beta *= kappa

Conventions and choices, against the hqq package (hqq/core/optimize.py, v0.2.8):
- hqq optimizes with the inverse scale (W * s_inv + z); this module divides by s. The two differ by a rounding of
  1 / s, not in meaning: the zero point is in grid units either way.
- The start is intk's min-max grid, not hqq's (whose range need not include 0 and whose scale is not fp16): with
  iterations=0 the result is intk's round-to-nearest bit for bit, and every iterate is compared against it.
- The objective is evaluated for the start and after each update, over the whole tensor as hqq does (one stop for
  all groups). The solver stops at the first iterate that does not lower it and keeps the best, as hqq's
  `optimize_weights_proximal_v2` does. hqq's default, `optimize_weights_proximal` (its "legacy" solver), differs:
  it never multiplies beta by kappa (beta stays 10) and, when the error rises, returns the zero point one update
  past the rise. kappa=1 reproduces its iterates; the stop rule is ours. hqq stops on the mean L1 error; this
  module on the lp objective it minimises (on a problem where both fall throughout, the results are the same).
- beta acts in weight units: shrink_p zeroes every |x| < beta^(-1 / (2 - p)) (0.17 for beta=10, p=0.7). On real
  LLM weights (|residual| ~ 1e-3) W_e is then 0 and each update is the least-squares zero point given the codes.
- optimize_scale (not in hqq's proximal solver, whose default updates only z): the same half-quadratic step for
  both parameters, the least-squares line W - W_e ~ s W_q - s z per group. A group whose codes are all equal, or
  whose fitted slope is not positive, keeps its scale.
- Storage: the kept iterate is stored in fp16 (scale rounded up, as intk's, zero point to nearest) and the codes
  are recomputed from the stored values, so dequantize() rebuilds exactly the returned weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantizers import packing
from quantizers.base import PerGroup, QuantizedTensor, check_finite
from quantizers.intk import BITS, round_up_fp16


@dataclass
class HQQSolution:
    """What the solver chose, unpacked (rows = out_features, cols = in_features, groups = cols // group_size).

    codes: (rows, cols) uint8 in [0, 2^bits - 1].
    scale: (rows, groups) float16; zero_point: (rows, groups) float16, a real number in grid units.
    weight: (rows, cols) float32, (codes - zero_point) * scale: exactly what QuantizedTensor.dequantize rebuilds.
    objective: sum |W - W_r|^p of each evaluated iterate (in fp32 (s, z), before storage): the start (intk's
        round-to-nearest) first, then one per update until the first that did not improve.
    best: the index in `objective` of the iterate kept.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    weight: torch.Tensor
    objective: list[float]
    best: int


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding, HQQ's closed-form stand-in for the prox of |.|^p / beta (exact for p = 1: plain
    soft-thresholding at 1 / beta). It zeroes |x| <= beta^(-1 / (2 - p)). |x|^(p-1) is inf at x = 0, where the result
    is 0 as it should be (never NaN: -inf clamps to 0)."""
    magnitude = x.abs()
    return torch.sign(x) * (magnitude - magnitude.pow(p - 1) / beta).clamp_min(0)


def hqq_optimize(
    groups: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    iterations: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    optimize_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """The proximal iterations on (n_groups, group_size) fp32 weights from a start (scale, zero), both (n_groups, 1)
    fp32 (scale > 0). -> (scale, zero) of the best iterate, fp32 (n_groups, 1); the objective of every evaluated
    iterate; the index of the best."""
    qmax = 2**bits - 1
    best, best_scale, best_zero = 0, scale, zero
    objective: list[float] = []
    for i in range(iterations + 1):
        codes = torch.clamp(torch.round(groups / scale + zero), 0, qmax)
        residual = groups - (codes - zero) * scale
        # float64 accumulation: near convergence successive objectives differ by ~1e-6 relative, fp32 sums by more
        objective.append(residual.abs().pow(lp_norm).sum(dtype=torch.float64).item())
        if i and objective[i] >= objective[best]:  # hqq's early stop: the first iterate that does not improve
            break
        best, best_scale, best_zero = i, scale, zero
        if i == iterations:
            break
        target = groups - shrink_lp(residual, beta, lp_norm)  # what W_r should rebuild, outliers' excess removed
        if optimize_scale:
            scale = _fit_scale(codes, target, scale)
        zero = (codes - target / scale).mean(dim=1, keepdim=True)
        beta *= kappa
    return best_scale, best_zero, objective, best


def _fit_scale(codes: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The slope of the least-squares line target ~ s codes + b per group (b = -s z, refitted by the caller
    as the mean, which is the same line's intercept); groups where it is undefined or not positive keep s."""
    centred = codes - codes.mean(dim=1, keepdim=True)
    variance = centred.pow(2).sum(dim=1, keepdim=True)
    slope = (centred * target).sum(dim=1, keepdim=True) / variance.clamp_min(1e-30)
    return torch.where((variance > 0) & (slope > 0) & torch.isfinite(slope), slope, scale)


def hqq_solve(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    iterations: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    optimize_scale: bool = False,
    *,
    name: str = "weight",
) -> HQQSolution:
    """HQQ on one (rows, cols) weight of any float dtype, unpacked result. bits: 2, 3, 4 or 8; group_size must divide
    cols; the rest as in HQQConfig (quantizers.hqq)."""
    rows, cols = _validate(weight, bits, group_size, iterations, lp_norm, beta, kappa, name)
    qmax = 2**bits - 1
    groups = weight.detach().float().reshape(-1, group_size)
    # intk's start, operation for operation (quantizers.intk), so iterations=0 is intk's round-to-nearest
    lo = groups.amin(dim=1, keepdim=True).clamp(max=0)
    hi = groups.amax(dim=1, keepdim=True).clamp(min=0)
    scale = round_up_fp16(((hi - lo) / qmax).masked_fill(hi == lo, 1.0))
    _check_fp16(scale, hi - lo, qmax, name)
    zero = torch.round(-lo / scale.float()).clamp(0, qmax)

    scale, zero, objective, best = hqq_optimize(groups, scale.float(), zero, bits, iterations, lp_norm, beta,
                                                kappa, optimize_scale)
    scale16 = round_up_fp16(scale)  # a no-op unless optimize_scale moved it; never 0, unlike round-to-nearest
    _check_fp16(scale16, hi - lo, qmax, name)
    zero16 = zero.to(torch.float16)
    if torch.isinf(zero16).any():
        raise ValueError(f"cannot HQQ-quantize {name}: a zero point reached {zero.abs().max().item():.4g} grid "
                         "steps, beyond fp16; use optimize_scale=false")
    s, z = scale16.float(), zero16.float()
    codes = torch.clamp(torch.round(groups / s + z), 0, qmax)
    return HQQSolution(
        codes=codes.to(torch.uint8).view(rows, cols),
        scale=scale16.view(rows, -1),
        zero_point=zero16.view(rows, -1),
        weight=((codes - z) * s).view(rows, cols),
        objective=objective,
        best=best,
    )


def hqq_quantize(weight: torch.Tensor, bits: int, group_size: int, iterations: int = 20, lp_norm: float = 0.7,
                 beta: float = 10.0, kappa: float = 1.01, optimize_scale: bool = False, *,
                 name: str = "weight") -> QuantizedTensor:
    """hqq_solve packed as intk's QuantizedTensor: codes, fp16 scale and fp16 zero_point (rows * groups,),
    PerGroup(group_size), format int{bits}_asym; dequantize() gives the solver's weight."""
    sol = hqq_solve(weight, bits, group_size, iterations, lp_norm, beta, kappa, optimize_scale, name=name)
    return QuantizedTensor(
        qdata=packing.pack(sol.codes.reshape(-1), bits),
        scale=sol.scale.reshape(-1),
        zero_point=sol.zero_point.reshape(-1),
        granularity=PerGroup(group_size),
        bits=bits,
        shape=weight.shape,
        dtype=weight.dtype,
        format=f"int{bits}_asym",
    )


def _check_fp16(scale: torch.Tensor, span: torch.Tensor, qmax: int, name: str) -> None:
    if torch.isinf(scale).any():
        raise ValueError(
            f"cannot HQQ-quantize {name}: a group spans {span.max().item():.4g}, more than an fp16 scale can hold "
            f"({torch.finfo(torch.float16).max} * {qmax}); rescale the weight"
        )


def _validate(weight, bits, group_size, iterations, lp_norm, beta, kappa, name) -> tuple[int, int]:
    if bits not in BITS:
        raise ValueError(f"HQQ bits={bits!r} is not accepted; use one of {BITS} (intk's widths)")
    if weight.dim() != 2:
        raise ValueError(f"HQQ needs a 2-D weight (out_features, in_features); {name} has shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        fits = [2**e for e in range(5, cols.bit_length()) if cols % 2**e == 0]
        hint = f"the powers of two >= 32 that divide it are {fits}" if fits else "no power of two >= 32 divides it"
        raise ValueError(f"HQQ group_size={group_size!r} does not divide {name}'s in_features={cols}; {hint}, "
                         f"and group_size={cols} gives one group per row")
    for field, value, accepted, ok in (
        ("iterations", iterations, "an integer >= 0 (0: intk's round-to-nearest)",
         isinstance(iterations, int) and iterations >= 0),
        ("lp_norm", lp_norm, "0 < p <= 1 (HQQ's default 0.7)", _real(lp_norm) and 0 < lp_norm <= 1),
        ("beta", beta, "a finite number > 0 (HQQ's default 10)", _real(beta) and beta > 0),
        ("kappa", kappa, "a finite number >= 1 (HQQ's default 1.01; 1 keeps beta fixed)", _real(kappa) and kappa >= 1),
    ):
        if not ok:
            raise ValueError(f"HQQ {field}={value!r} is not accepted; use {accepted}")
    check_finite(weight, name)
    return rows, cols


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
