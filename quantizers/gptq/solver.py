"""The GPTQ algorithm (Frantar et al. 2022, Algorithm 1) as pure tensor functions, writing intk's storage format.

Shapes: a weight W is (rows, cols) = (out_features, in_features); calibration activations X are
(n, in_features); the Hessian of the layer's squared output error ||W X^T - W_hat X^T||^2 / n is
H = 2 X^T X / n, (in_features, in_features).

GPTQ quantizes W one input column j at a time. Rounding column j leaves an error w_j - q_j; the optimal
(OBS) compensation moves it onto the columns not yet quantized, F = {j+1, ...}. With U the upper Cholesky
factor of H^-1 (H^-1 = U^T U, U upper triangular) that update is

    err = (w_j - q_j) / U[j, j]         W[:, j+1:] -= err (outer) U[j, j+1:]

because row j of U is the first row of inv(H[j:, j:]) divided by the square root of its first entry, i.e.
exactly the OBS update with the inverse Hessian of the remaining columns, without ever updating an inverse.
The "lazy batch" trick applies the updates within a block of `block_size` columns eagerly and those onto
later columns once per block (W[:, end:] -= Err @ U[start:end, end:]): the same arithmetic, regrouped so
the bulk of the work is one matrix product per block instead of a rank-1 update per column.

Storage: intk's. Codes q in [0, 2^k - 1], one fp16 scale and one zero point (fp16, an integer) per
`group_size` consecutive input features of each row, w ~ (q - zero_point) * scale. Two grids:
  asym (format int{k}_asym): intk's min-max rule. lo = min(w, 0), hi = max(w, 0) over the group (the range
      always includes 0), scale = (hi - lo) / (2^k - 1) rounded UP to fp16, zero_point = round(-lo / scale).
  sym (format int{k}_sym): GPTQ's reference convention. zero_point = 2^(k-1) for every group, scale =
      2 * max|w| / (2^k - 1) rounded up to fp16. The grid is [-2^(k-1), 2^(k-1) - 1] * scale; +max|w| maps to
      2^(k-1) - 1/2 steps and is clamped to the top level, an error of at most scale / 2, the same bound
      rounding has everywhere else (and a finer step than absmax / (2^(k-1) - 1), which would need no clamp
      but wastes half a level). The zero point is still stored, so sym is intk's format with fixed zero points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantizers import packing
from quantizers.base import PerGroup, QuantizedTensor, check_finite
from quantizers.intk import BITS, round_up_fp16

WORK_DTYPES = (torch.float32, torch.float64)
HESSIAN_DTYPES = {"float32": torch.float32, "float64": torch.float64}  # a config's names for them


class HessianAccumulator:
    """Running H = 2 X^T X / n over every activation row seen, in float64 by default (GPTQ's `add_batch`);
    float32 is the reference's choice and twice as fast, which a whole model's calibration needs on a CPU.

    add(x) takes any (..., in_features) batch; rows are all leading dimensions flattened. The update is
    the reference's running mean, H *= n / (n + m); H += (sqrt(2 / (n + m)) x)^T (sqrt(2 / (n + m)) x), which keeps
    H at the scale of one row (no sum over millions of tokens to overflow or lose precision in) and lets
    calibration stop after any batch.
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float64) -> None:
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"HessianAccumulator needs a positive in_features, not {in_features!r}")
        if dtype not in WORK_DTYPES:
            raise ValueError(f"HessianAccumulator dtype={dtype} is not accepted; use one of {list(WORK_DTYPES)}")
        self.in_features = in_features
        self.dtype = dtype
        # rows of H per panel: H accumulates panel by panel on and above the diagonal, about 60% of a full X^T X's
        # multiply-adds for 3-4 panels (measured on 4,096 rows: 576 wide 10.4 vs 16.0 ms, 1536 wide 66 vs 119 ms);
        # each entry is still one dot product over the rows, so H is the same to the bit. Narrow H: one panel.
        self._panel = -(-in_features // min(4, max(1, in_features // 192)))
        self.samples = 0
        self._hessian: torch.Tensor | None = None  # made on the first batch's device

    def add(self, x: torch.Tensor) -> None:
        """x: (..., in_features) activations (any float dtype, any device)."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"HessianAccumulator(in_features={self.in_features}) got activations of shape {tuple(x.shape)}; "
                f"their last dimension must be {self.in_features}"
            )
        rows = x.detach().reshape(-1, self.in_features).to(self.dtype)
        m = rows.shape[0]
        if m == 0:
            return
        # one NaN/Inf would poison every entry of H, and GPTQ would silently zero or scramble the whole layer
        check_finite(rows, "the calibration activations")
        if self._hessian is None:
            self._hessian = torch.zeros(self.in_features, self.in_features, dtype=self.dtype, device=rows.device)
        total = self.samples + m
        self._hessian *= self.samples / total
        rows = rows * math.sqrt(2 / total)
        step = self._panel
        for i in range(0, self.in_features, step):  # the upper panels only: H is symmetric
            self._hessian[i:i + step, i:].addmm_(rows[:, i:i + step].T, rows[:, i:])
        self.samples = total

    @property
    def hessian(self) -> torch.Tensor:
        """(in_features, in_features) in the accumulator's dtype: 2 X^T X / n over the `samples` rows added so far."""
        if self._hessian is None:
            raise ValueError("HessianAccumulator has no Hessian yet: add() at least one non-empty batch first")
        if self._panel == self.in_features:
            return self._hessian
        upper = torch.triu(self._hessian)
        return upper + torch.triu(upper, 1).T  # the panels' lower triangle is the upper one's mirror


@dataclass
class GPTQSolution:
    """What the solver chose, unpacked (rows = out_features, cols = in_features, groups = cols // group_size).

    codes: (rows, cols) uint8 in [0, 2^bits - 1], natural column order.
    scale: (rows, groups) float16, zero_point: (rows, groups) float32 (integers).
    weight: (rows, cols) float32, (codes - zero_point) * scale: exactly what QuantizedTensor.dequantize rebuilds.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    weight: torch.Tensor


def gptq_quantize(
    weight: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    *,
    work_dtype: torch.dtype = torch.float32,
    name: str = "weight",
) -> QuantizedTensor:
    """GPTQ-quantize `weight` (rows, cols) against the Hessian H (cols, cols) into intk's storage format.

    Returns a QuantizedTensor like intk's: packed codes, fp16 scale (rows * groups,), fp16 zero_point
    (rows * groups,), PerGroup(group_size), format int{bits}_asym or int{bits}_sym; dequantize() gives the
    solver's chosen weight. Arguments as for gptq_solve.
    """
    sol = gptq_solve(weight, H, bits, group_size, sym, act_order, static_groups, block_size, damp,
                     work_dtype=work_dtype, name=name)
    return QuantizedTensor(
        qdata=packing.pack(sol.codes.reshape(-1), bits),
        scale=sol.scale.reshape(-1),
        zero_point=sol.zero_point.reshape(-1).to(torch.float16),  # integers <= 255 are exact in fp16
        granularity=PerGroup(group_size),
        bits=bits,
        shape=weight.shape,
        dtype=weight.dtype,
        format=f"int{bits}_{'sym' if sym else 'asym'}",
    )


def gptq_solve(
    weight: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    *,
    work_dtype: torch.dtype = torch.float32,
    name: str = "weight",
) -> GPTQSolution:
    """GPTQ (Frantar et al. 2022, Algorithm 1) on one weight, unpacked result.

    weight: (rows, cols) any float dtype, any device; H: (cols, cols) Hessian, e.g. HessianAccumulator.hessian
        (used in float64 on the weight's device).
    bits: 2, 3, 4 or 8. group_size: must divide cols; one (scale, zero point) per group of each row.
    sym: the symmetric grid (zero point 2^(bits-1)), else intk's asymmetric min-max grid (see module docstring).
    act_order: quantize columns in decreasing diag(H) order (the most sensitive inputs first, while the most
        unquantized columns remain to absorb their error). Needs static_groups=True.
    static_groups: compute every group's (scale, zero point) up front from the original weight, in natural
        column order. Without it a group's parameters come from its CURRENT, error-updated weights when the
        solver reaches its first column (GPTQ's reference behaviour; usually a little more accurate).
    block_size: columns per lazy batch; any value gives the same result up to float rounding.
    damp: lambda = damp * mean(diag(H)) is added to H's diagonal, so H is invertible and the updates stay tame.
    work_dtype: float32 (the reference's precision for W and the updates) or float64 (for exactness checks).
    name: how errors refer to the weight.
    """
    rows, cols = _validate(weight, H, bits, group_size, act_order, static_groups, block_size, damp,
                           work_dtype, name)
    device = weight.device
    qmax = 2**bits - 1
    n_groups = cols // group_size
    W = weight.detach().to(work_dtype, copy=True)
    H = H.detach().to(device=device, dtype=torch.float64, copy=True)

    # An input that is always 0 on the calibration data has H_ii = 0: its column cannot affect the output there,
    # so the reference zeroes it and gives it H_ii = 1 to keep H invertible.
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    scale = torch.empty(rows, n_groups, dtype=torch.float16, device=device)
    zero = torch.empty(rows, n_groups, dtype=work_dtype, device=device)
    if static_groups:
        for g in range(n_groups):
            scale[:, g], zero[:, g] = _group_params(W[:, g * group_size:(g + 1) * group_size], bits, sym, name)

    order = torch.arange(cols, device=device)
    if act_order:
        # stable: equal diagonals keep their natural order, so the result does not depend on the sort kernel
        order = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        W = W[:, order]
        H = H[order][:, order]
    column = order.tolist()  # processed position -> natural column (python ints: indexed once per column)

    U = _inverse_cholesky(H, damp, name).to(work_dtype)
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=device)
    chosen = torch.empty(rows, cols, dtype=torch.float32, device=device)
    scale_w = scale.to(work_dtype)  # fp16 -> fp32/fp64 is exact; refreshed below when a group is computed

    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1 = W[:, start:end].clone()  # this block's columns, updated eagerly
        Err1 = torch.zeros_like(W1)  # each column's scaled error, for the lazy update of later blocks
        U1 = U[start:end, start:end]
        for i in range(end - start):
            j = start + i
            if not static_groups and j % group_size == 0:  # act_order is static, so j is a natural column here
                g = j // group_size
                current = _current_group(W, W1, Err1, U, start, i, j + group_size)
                scale[:, g], zero[:, g] = _group_params(current, bits, sym, name)
                scale_w[:, g] = scale[:, g].to(work_dtype)
            g = column[j] // group_size
            s, z = scale_w[:, g], zero[:, g]
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s) + z, 0, qmax)  # intk's rule, operation for operation
            wq = (q - z) * s
            err = (w - wq) / U1[i, i]
            W1[:, i + 1:].addr_(err, U1[i, i + 1:], alpha=-1)  # OBS: push the error onto the block's later columns
            Err1[:, i] = err
            codes[:, column[j]] = q.to(torch.uint8)
            chosen[:, column[j]] = wq.float()
        W[:, end:].addmm_(Err1, U[start:end, end:], alpha=-1)  # ... and, once per block, onto all later ones

    return GPTQSolution(codes=codes, scale=scale, zero_point=zero.float(), weight=chosen)


def _current_group(W: torch.Tensor, W1: torch.Tensor, Err1: torch.Tensor, U: torch.Tensor,
                   start: int, i: int, group_end: int) -> torch.Tensor:
    """(rows, group_size): the group starting at block column i, with every error update so far applied.

    Columns inside the block are current in W1. Columns past the block (a group longer than, or not aligned
    with, the block) still lack this block's pending updates from its first i columns, which are added here
    so the group parameters do not depend on block_size. (The reference reads W there, and reads W, not W1,
    even inside the block, so its parameters of a group that starts mid-block miss that block's updates.)
    """
    end = start + W1.shape[1]
    inside = W1[:, i:min(group_end, end) - start]
    if group_end <= end:
        return inside
    outside = W[:, end:group_end]
    if i:
        outside = outside - Err1[:, :i] @ U[start:start + i, end:group_end]
    return torch.cat((inside, outside), dim=1)


def _group_params(w: torch.Tensor, bits: int, sym: bool, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w: (rows, group_size) -> (scale (rows,) float16, zero_point (rows,) w.dtype, integer-valued).

    asym is intk's rule operation for operation (so GPTQ without error feedback gives intk's codes bit for bit);
    sym is GPTQ's reference grid, zero point 2^(bits-1) (module docstring).
    """
    qmax = 2**bits - 1
    if sym:
        absmax = w.abs().amax(dim=1)
        scale = (2 * absmax / qmax).masked_fill(absmax == 0, 1.0)  # an all-zero group: any scale is exact
        span = 2 * absmax
    else:
        lo = w.amin(dim=1).clamp(max=0)
        hi = w.amax(dim=1).clamp(min=0)
        scale = ((hi - lo) / qmax).masked_fill(hi == lo, 1.0)
        span = hi - lo
    scale = round_up_fp16(scale)  # stored in fp16; rounding up keeps the group's range inside the grid
    if torch.isinf(scale).any():
        raise ValueError(
            f"cannot GPTQ-quantize {name}: a group spans {span.max().item():.4g} (after error feedback), more than "
            f"an fp16 scale can hold ({torch.finfo(torch.float16).max} * {qmax}); rescale the weight"
        )
    if sym:
        zero = torch.full_like(w[:, 0], 2 ** (bits - 1))
    else:
        zero = torch.round(-lo / scale.to(w.dtype)).clamp(0, qmax)
    return scale, zero


def _inverse_cholesky(H: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """H: (cols, cols) float64 -> U upper triangular with (H + lambda I)^-1 = U^T U, lambda = damp * mean(diag H)."""
    H = H.clone()
    H.diagonal().add_(damp * torch.diagonal(H).mean())
    L, info = torch.linalg.cholesky_ex(H)
    if not info.item():
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if info.item():
        raise ValueError(
            f"cannot GPTQ-quantize {name}: its Hessian plus damp={damp} * mean(diag) is not positive definite "
            f"(too few or too collinear calibration rows); raise damp (e.g. 0.1) or calibrate on more data"
        )
    return U


def _validate(weight, H, bits, group_size, act_order, static_groups, block_size, damp, work_dtype,
              name) -> tuple[int, int]:
    if bits not in BITS:
        raise ValueError(f"GPTQ bits={bits!r} is not accepted; use one of {BITS} (intk's widths)")
    if weight.dim() != 2:
        raise ValueError(f"GPTQ needs a 2-D weight (out_features, in_features); {name} has shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        fits = [2**p for p in range(5, cols.bit_length()) if cols % 2**p == 0]
        hint = (f"the powers of two >= 32 that divide it are {fits}" if fits
                else "no power of two >= 32 divides it")
        raise ValueError(
            f"GPTQ group_size={group_size!r} does not divide {name}'s in_features={cols}; {hint}, "
            f"and group_size={cols} gives one group per row"
        )
    if tuple(H.shape) != (cols, cols):
        raise ValueError(
            f"GPTQ needs a Hessian of shape ({cols}, {cols}) for {name} of shape {tuple(weight.shape)}; "
            f"got {tuple(H.shape)} (H is in_features x in_features: accumulate the layer's inputs)"
        )
    check_finite(weight, name)
    if not torch.isfinite(H).all():
        raise ValueError(f"cannot GPTQ-quantize {name}: its Hessian holds NaN/Inf (check the calibration inputs)")
    if act_order and not static_groups:
        raise ValueError(
            "GPTQ act_order=True needs static_groups=True: with groups computed during the solve, act_order would "
            "visit a group's columns out of order and need a per-column group index (g_idx), which intk's "
            "plain per-group format does not store. Pass static_groups=True, or act_order=False."
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"GPTQ block_size={block_size!r} is not accepted; use a positive integer (e.g. 128)")
    if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise ValueError(f"GPTQ damp={damp!r} is not accepted; use a fraction >= 0 of mean(diag(H)) (e.g. 0.01)")
    if work_dtype not in WORK_DTYPES:
        raise ValueError(f"GPTQ work_dtype={work_dtype} is not accepted; use one of {WORK_DTYPES}")
    return rows, cols
