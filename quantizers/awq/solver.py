"""AWQ (Lin et al. 2023, "Activation-aware Weight Quantization") as pure torch functions: the per-channel scale
search, the weight-clipping search, and folding the scales into a llama-style decoder layer.

Shapes: a weight W is (out_features, in_features); calibration inputs x are (n, in_features).

Premise: a few input channels carry much larger activations than the rest (salient channels), and a weight's
rounding error reaches the output multiplied by its input. Scaling column j of W by s_j and input j by 1 / s_j
computes the same x W^T, but W s is what gets quantized: Q(W s) / s rounds column j on a grid s_j times finer
relative to it, while the group's step grows only if that column becomes the group's extreme. So large s_j on
the salient channels and small s_j elsewhere trade error where the inputs are small for error where they are
large. AWQ's search (`search_scale`): s = a^alpha, a = mean |x| per input channel, normalised to
s / sqrt(max(s) min(s)), for alpha in {0, 1/grid, ..., (grid - 1)/grid}, keeping the alpha whose quantized
output is closest to the original on the calibration rows. alpha = 0 is s = 1 exactly, plain round-to-nearest,
so the chosen error is never above RTN's on those rows.

The scales are never stored (quantizers.awq.fold): the op feeding the linears divides its output by s (a norm's weight
and bias, or the rows of a linear: v_proj before o_proj, up_proj before down_proj) and the linears' columns are
multiplied by s, which computes the same function before quantization. `layer_groups` lists those
(op, linears) pairs of a llama-style decoder layer.

Clipping (`search_clip`): after scaling, shrinking each group's range to a fraction of its max |w| trades a
larger error on the few clipped outliers for a finer step on the rest; AWQ picks the fraction per (row, group)
that minimises that group's partial output error on the calibration rows.

The fake quant: any callable w -> w_hat (quantize then dequantize; same shape, a float dtype), or a Quantizer
(e.g. IntKConfig(bits=4, group_size=128).build()), which is called as quantize(w).dequantize(). search_clip
needs it group-local: w_hat's group of `group_size` consecutive inputs of a row depends on that group of w
alone (intk's with the same group_size is), since each group's clip is chosen on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from quantizers.base import check_finite

FakeQuant = Callable[[torch.Tensor], torch.Tensor]

MIN_SCALE = 1e-4  # AWQ's clamp of a^alpha: a channel that is always 0 would otherwise get s = 0


# ---------------------------------------------------------------- the scale search


@dataclass
class ScaleSearch:
    """search_scale's result. scales: (in_features,), in the work dtype (float32, or float64 for float64 x);
    alpha: the chosen exponent; errors: (grid,) float64, errors[i] the mean squared output error at alpha = i / grid
    (errors[0]: round-to-nearest's)."""

    scales: torch.Tensor
    alpha: float
    errors: torch.Tensor

    @property
    def error(self) -> float:
        return self.errors.min().item()


def search_scale(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    fake_quant: FakeQuant,
    grid: int = 20,
    inspect: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None,
    max_rows: int | None = 8192,
) -> ScaleSearch:
    """AWQ's scale search for the linears `weights` [(out_i, in_features)] that all read x (..., in_features).

    The error at scales s: mean over outputs of (y - y_hat)^2 with
      default: y = concat_i x W_i^T,  y_hat = concat_i (x / s) Q(W_i s)^T, on at most `max_rows` rows of x (evenly
          spaced, so deterministic; None: all);
      inspect: y = inspect(x, weights), y_hat = inspect(x / s, [Q(W_i s)]): the output of the block the linears sit
          in (AWQ's module2inspect), given x as passed (a block with attention needs whole sequences, so it sees
          every row: bound x's size in the caller; max_rows does not apply).
    a = mean |x| is taken over every row. Computed in float32 (float64 if x is float64).
    """
    dtype = _work_dtype(x)
    ws = _check_scale_inputs(x, weights, grid, max_rows)
    fq = _as_fake_quant(fake_quant, "search_scale")
    x = x.detach().to(dtype)
    ws = [w.detach().to(device=x.device, dtype=dtype) for w in ws]
    rows = x.reshape(-1, x.shape[-1])
    check_finite(rows, "the calibration inputs x")
    a = rows.abs().mean(0)  # AWQ's activation magnitude per input channel

    if inspect is None:
        rows = _subsample(rows, max_rows)
        count = rows.shape[0] * sum(w.shape[0] for w in ws)

        def error(s: torch.Tensor) -> torch.Tensor:
            # (x / s) Q(W s)^T = x (Q(W s) / s)^T: formed from the weight difference, so the small error is not the
            # cancellation of two large outputs, and no reference output is kept
            return sum(((rows @ (w - _quant(fq, w * s) / s).T) ** 2).sum() for w in ws) / count
    else:
        reference = _block_output(inspect, x, ws)

        def error(s: torch.Tensor) -> torch.Tensor:
            out = _block_output(inspect, x / s, [_quant(fq, w * s) for w in ws])
            return (reference - out).to(dtype).pow(2).mean()

    errors, best, best_scales = [], 0, None
    for i in range(grid):
        s = a.pow(i / grid).clamp(min=MIN_SCALE)
        s = s / (s.max() * s.min()).sqrt()  # AWQ's normalisation: the scales straddle 1
        err = error(s).item()
        if not math.isfinite(err):
            raise ValueError(f"AWQ scale search: the output error at alpha={i / grid} is {err}; the fake quant or "
                             "the inspect callable returned NaN/Inf")
        errors.append(err)
        if best_scales is None or err < errors[best]:  # ties keep the smaller alpha, as AWQ's strict < does
            best, best_scales = i, s
    return ScaleSearch(scales=best_scales, alpha=best / grid, errors=torch.tensor(errors, dtype=torch.float64))


def _block_output(inspect, x, ws) -> torch.Tensor:
    out = inspect(x, ws)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"search_scale's inspect must return a tensor (the block's output), not {type(out).__name__}; "
                        "unpack a module's tuple output in the callable")
    return out


def _check_scale_inputs(x, weights, grid, max_rows) -> list[torch.Tensor]:
    if x.dim() < 2:
        raise ValueError(f"search_scale needs x of shape (..., in_features); got {tuple(x.shape)}")
    ws = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if not ws:
        raise ValueError("search_scale needs at least one weight in `weights`; got none")
    for i, w in enumerate(ws):
        if w.dim() != 2 or w.shape[1] != x.shape[-1]:
            raise ValueError(f"search_scale: weights[{i}] has shape {tuple(w.shape)}; every weight must be "
                             f"(out_features, {x.shape[-1]}) to read x of shape {tuple(x.shape)}")
        check_finite(w, f"weights[{i}]")
    _check_positive_int("search_scale", "grid", grid)
    if max_rows is not None:
        _check_positive_int("search_scale", "max_rows", max_rows)
    return ws


# ---------------------------------------------------------------- the clip search


def search_clip(
    w: torch.Tensor,
    x: torch.Tensor,
    fake_quant: FakeQuant,
    group_size: int,
    grid: int = 20,
    max_shrink: float = 0.5,
    max_rows: int | None = 512,
) -> torch.Tensor:
    """AWQ's auto_clip for one weight w (out, in) read by x (..., in) -> max_val (out, in // group_size).

    For each row and group of `group_size` consecutive inputs, the clip |w| <= (1 - i / grid) max|w_group| for
    i in 0 .. int(grid * max_shrink) - 1 (i = 0: no clip) whose fake-quantized group gives the smallest mean
    squared partial output x_g . (w_g - Q(clip(w_g))) over at most `max_rows` rows of x (evenly spaced; AWQ uses
    512 tokens). Ties keep the milder clip, so no group's error exceeds its unclipped one. fake_quant must be
    group-local with this group_size (module docstring); pass the scaled weight and scaled inputs when clipping
    after search_scale, as AWQ does (it also skips q_proj and k_proj, whose outputs meet in q k^T).
    Computed in float32 (float64 if x is float64). Use apply_clip(w, max_val) to clip.
    """
    dtype = _work_dtype(x)
    rows, cols = _check_clip_inputs(w, x, group_size, grid, max_shrink, max_rows)
    fq = _as_fake_quant(fake_quant, "search_clip")
    configured = getattr(getattr(fake_quant, "config", None), "group_size", group_size)
    if configured != group_size:
        raise ValueError(f"search_clip group_size={group_size} differs from the quantizer's group_size={configured}: "
                         "each group's clip is chosen on its own, so they must be the same groups")
    groups = cols // group_size
    W = w.detach().to(device=x.device, dtype=dtype).reshape(rows, groups, group_size)
    X = _subsample(x.detach().reshape(-1, cols), max_rows).to(dtype)
    check_finite(X, "the calibration inputs x")
    X = X.reshape(-1, groups, group_size).transpose(0, 1)  # (groups, n, group_size)
    org_max = W.abs().amax(dim=-1)  # (rows, groups)
    best = org_max.clone()
    # each candidate's partial outputs are (rows, n, groups): a batch of rows keeps them near 2^24 elements
    batch = max(1, 2**24 // (X.shape[1] * groups))
    for start in range(0, rows, batch):
        Wb, top = W[start:start + batch], org_max[start:start + batch]
        best_err = None
        for i in range(max(1, int(max_shrink * grid))):  # AWQ's range(int(max_shrink * n_grid))
            max_val = top * (1 - i / grid)
            clipped = torch.clamp(Wb, -max_val.unsqueeze(-1), max_val.unsqueeze(-1))
            diff = Wb - _quant(fq, clipped.reshape(len(Wb), cols)).reshape(Wb.shape)
            err = torch.bmm(X, diff.permute(1, 2, 0)).pow(2).mean(dim=1).T  # (batch, groups)
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best[start:start + batch][better] = max_val[better]
    return best


def apply_clip(w: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """w (out, in) clipped to [-max_val, max_val] per group: max_val (out, groups), groups dividing in. -> new tensor
    in w's dtype (assign it to the module's weight)."""
    if w.dim() != 2 or max_val.dim() != 2 or max_val.shape[0] != w.shape[0] or w.shape[1] % max(max_val.shape[1], 1):
        raise ValueError(f"apply_clip needs w (out, in) and max_val (out, groups) with groups dividing in; got w "
                         f"{tuple(w.shape)} and max_val {tuple(max_val.shape)} (search_clip's output for this w)")
    if (max_val < 0).any():
        raise ValueError("apply_clip: max_val holds negative thresholds; it must be search_clip's (>= 0)")
    groups = max_val.shape[1]
    m = max_val.to(device=w.device).unsqueeze(-1)
    return torch.clamp(w.reshape(w.shape[0], groups, -1), -m, m).reshape(w.shape).to(w.dtype)


def _check_clip_inputs(w, x, group_size, grid, max_shrink, max_rows) -> tuple[int, int]:
    if w.dim() != 2:
        raise ValueError(f"search_clip needs a 2-D weight (out_features, in_features); got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if x.dim() < 2 or x.shape[-1] != cols:
        raise ValueError(f"search_clip needs x of shape (..., {cols}) for w of shape {tuple(w.shape)}; "
                         f"got {tuple(x.shape)}")
    if not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        raise ValueError(f"search_clip group_size={group_size!r} does not divide in_features={cols}; use the "
                         "quantizer's group size, which must")
    check_finite(w, "the weight w")
    _check_positive_int("search_clip", "grid", grid)
    if not (isinstance(max_shrink, (int, float)) and 0 <= max_shrink < 1):
        raise ValueError(f"search_clip max_shrink={max_shrink!r} is not accepted; use a fraction in [0, 1) "
                         "(AWQ: 0.5, clips down to 55% of the group's max |w|)")
    if max_rows is not None:
        _check_positive_int("search_clip", "max_rows", max_rows)
    return rows, cols


# ---------------------------------------------------------------- shared


def _as_fake_quant(fake_quant, who: str) -> FakeQuant:
    if hasattr(fake_quant, "quantize"):  # a Quantizer: quantize, then dequantize in the weight's dtype
        return lambda w: fake_quant.quantize(w).dequantize(w.dtype)
    if callable(fake_quant):
        return fake_quant
    raise TypeError(f"{who}: fake_quant must be a callable w -> w_hat or a Quantizer (with .quantize), not "
                    f"{type(fake_quant).__name__}")


def _quant(fq: FakeQuant, w: torch.Tensor) -> torch.Tensor:
    w_hat = fq(w)
    if not isinstance(w_hat, torch.Tensor) or w_hat.shape != w.shape:
        got = tuple(w_hat.shape) if isinstance(w_hat, torch.Tensor) else type(w_hat).__name__
        raise ValueError(f"the fake quant must return a tensor of the weight's shape {tuple(w.shape)}; got {got} "
                         "(a QuantizedTensor? pass the Quantizer itself, or dequantize in the callable)")
    return w_hat.to(w.dtype)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _subsample(rows: torch.Tensor, max_rows: int | None) -> torch.Tensor:
    """At most max_rows rows, evenly spaced from the first: deterministic, and spread over every sequence."""
    if max_rows is None or rows.shape[0] <= max_rows:
        return rows
    return rows[::-(-rows.shape[0] // max_rows)]


def _check_positive_int(who: str, field_name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{who} {field_name}={value!r} is not accepted; use a positive integer")
