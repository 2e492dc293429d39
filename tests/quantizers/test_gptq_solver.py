"""quantizers.gptq.solver: GPTQ's algorithm against an explicit OBS oracle, its block-size invariance, its reduction to
intk's round-to-nearest when H is diagonal, its gain over RTN on correlated inputs, the intk storage it writes, its
input checks, and the Hessian accumulator.

The test problem (the brief's): calibration inputs X = Z @ A, 2048 x 256, Z Gaussian and A a random Gaussian mixing
matrix (so the inputs are correlated: cond(H) ~ 4e5), a Gaussian weight of 128 x 256, groups of 64.
"""

import math

import pytest
import torch

from quantizers.gptq.solver import HessianAccumulator, gptq_quantize, gptq_solve
from quantizers.intk import IntKConfig

EPS64 = torch.finfo(torch.float64).eps


def correlated_problem(seed=0, n=2048, cols=256, rows=128):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=gen) @ (torch.randn(cols, cols, generator=gen) / 16)
    W = torch.randn(rows, cols, generator=gen)
    acc = HessianAccumulator(cols)
    acc.add(X)
    return W, X, acc.hessian


@pytest.fixture(scope="module")
def problem():
    return correlated_problem()


def rtn(W, bits, group):
    return IntKConfig(bits=bits, group_size=group).build().quantize(W)


def output_error(W, W_hat, X):
    """||W X^T - W_hat X^T||_F, in float64 so the metric adds no rounding of its own worth speaking of."""
    return torch.linalg.norm((W.double() - W_hat.double()) @ X.double().T).item()


def codes_of(qt):
    from quantizers import packing

    return packing.unpack(qt.qdata, qt.bits, qt.numel).view(qt.shape)


# ---------------------------------------------------------------- the algorithm itself


def round_up_fp16(x: torch.Tensor) -> torch.Tensor:
    half = x.half()
    return torch.where(half.double() < x, torch.nextafter(half, torch.full_like(half, math.inf)), half)


def obs_oracle(W, H, bits, group, damp=0.01):
    """Algorithm 1 written the long way, in float64: one column at a time, no blocks, no Cholesky. After column j is
    rounded, the optimal (OBS) update of the remaining columns F = j.. uses the inverse of H restricted to them:
    W[:, j+1:] -= (w_j - q_j) / Finv[0, 0] * Finv[0, 1:], Finv = inv(H[j:, j:]). Group parameters: intk's min-max rule
    on the group's current weights when its first column comes up."""
    W, H = W.double().clone(), H.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * H.diagonal().mean() * torch.eye(len(H), dtype=torch.float64)
    qmax = 2**bits - 1
    codes = torch.empty(W.shape, dtype=torch.uint8)
    for j in range(W.shape[1]):
        if j % group == 0:
            block = W[:, j:j + group]
            lo, hi = block.amin(1).clamp(max=0), block.amax(1).clamp(min=0)
            s = round_up_fp16(((hi - lo) / qmax).masked_fill(hi == lo, 1.0)).double()
            z = torch.round(-lo / s).clamp(0, qmax)
        q = torch.clamp(torch.round(W[:, j] / s) + z, 0, qmax)
        Finv = torch.linalg.inv(H[j:, j:])
        W[:, j + 1:] -= torch.outer((W[:, j] - (q - z) * s) / Finv[0, 0], Finv[0, 1:])
        codes[:, j] = q.to(torch.uint8)
    return codes


@pytest.mark.parametrize("bits", [3, 4])
def test_solver_matches_the_explicit_obs_oracle(bits):
    """The Cholesky row U[j, j:] is Finv[0, :] / sqrt(Finv[0, 0]), so the solver's update is the oracle's exactly in
    real arithmetic. In float64 the two differ by ~cond(H) * n * eps64 relative (< 1e-9 here); a code could only
    differ for a weight that close to a rounding boundary, which the fixed seed does not produce. So: equal codes."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(512, 96, generator=gen) @ (torch.randn(96, 96, generator=gen) / 10)
    W = torch.randn(16, 96, generator=gen)
    acc = HessianAccumulator(96)
    acc.add(X)
    # block 40 is not a multiple of the group 32: groups start mid-block and run past its end
    sol = gptq_solve(W, acc.hessian, bits, 32, block_size=40, work_dtype=torch.float64)
    assert torch.equal(sol.codes, obs_oracle(W, acc.hessian, bits, 32))


@pytest.mark.parametrize(("block", "group"), [(128, 64), (48, 64), (256, 64), (32, 128), (7, 32)])
@pytest.mark.parametrize("variant", ["plain", "sym", "act_order"])
def test_lazy_blocks_give_the_same_result_as_column_by_column(problem, block, group, variant):
    """block_size=1 applies every update eagerly; a larger block regroups the same sums (W[:, end:] -= Err @ U), and
    group parameters are read from the fully updated weights either way. In float64 the two orders differ by
    ~256 * eps64 ~ 6e-14 relative; a code, scale or zero point could only differ for a value that close to a
    rounding or fp16 boundary, which this fixed problem does not have. So everything must be equal, no tolerance.
    (In float32 the same holds on this problem too, but a single value near a boundary could legitimately flip.)"""
    W, _, H = problem
    kw = {"sym": variant == "sym", "act_order": variant == "act_order", "static_groups": variant == "act_order"}
    eager = gptq_solve(W, H, 3, group, block_size=1, work_dtype=torch.float64, **kw)
    lazy = gptq_solve(W, H, 3, group, block_size=block, work_dtype=torch.float64, **kw)
    assert torch.equal(eager.codes, lazy.codes)
    assert torch.equal(eager.scale, lazy.scale)
    assert torch.equal(eager.zero_point, lazy.zero_point)


# ---------------------------------------------------------------- what it buys over round-to-nearest


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(problem, bits):
    """GPTQ minimises the output error on the calibration inputs that RTN ignores. Measured ratios GPTQ / RTN on this
    problem: 0.716 at 3 bits, 0.707 at 4 bits; asserted: strictly below RTN (a wrong sign or a missing update
    lands above 1)."""
    W, X, H = problem
    reference = rtn(W, bits, 64)
    qt = gptq_quantize(W, H, bits, 64)
    assert output_error(W, qt.dequantize(torch.float32), X) < output_error(W, reference.dequantize(torch.float32), X)
    assert not torch.equal(codes_of(qt), codes_of(reference))  # H is not diagonal: the error feedback acts


@pytest.mark.parametrize("bits", [3, 4])
def test_act_order_with_static_groups_beats_round_to_nearest(problem, bits):
    """Measured GPTQ(act_order, static_groups) / RTN: 0.693 at 3 bits, 0.690 at 4 bits."""
    W, X, H = problem
    qt = gptq_quantize(W, H, bits, 64, act_order=True, static_groups=True)
    assert output_error(W, qt.dequantize(torch.float32), X) < output_error(W, rtn(W, bits, 64).dequantize(torch.float32), X)


def test_act_order_without_static_groups_names_the_fix(problem):
    W, _, H = problem
    with pytest.raises(ValueError, match="static_groups=True"):
        gptq_quantize(W, H, 4, 64, act_order=True)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("diagonal", ["identity", "random"])
@pytest.mark.parametrize("order", [{}, {"static_groups": True}, {"act_order": True, "static_groups": True}])
def test_a_diagonal_hessian_reduces_gptq_to_round_to_nearest(problem, bits, diagonal, order):
    """With H diagonal (uncorrelated inputs), H + lambda I and its inverse are diagonal and so is U: every update
    err * U[j, j+1:] adds exactly 0 and the weights never move. The group parameters are then computed from the
    original weights, by intk's rule operation for operation, and each column rounds exactly as intk does: the codes,
    scales and zero points equal intk's bit for bit, whatever the dampening or the column order."""
    W, _, _ = problem
    gen = torch.Generator().manual_seed(2)
    H = torch.eye(256, dtype=torch.float64)
    if diagonal == "random":
        H = torch.diag(torch.rand(256, generator=gen, dtype=torch.float64) * 10 + 0.1)
    qt = gptq_quantize(W, H, bits, 64, **order)
    reference = rtn(W, bits, 64)
    assert torch.equal(qt.qdata, reference.qdata)
    assert torch.equal(qt.scale, reference.scale)
    assert torch.equal(qt.zero_point, reference.zero_point)


def test_a_dead_input_is_zeroed_before_quantization(problem):
    """H_ii = 0 (an input that is always 0 in calibration) -> its column is zeroed and H_ii set to 1; with H otherwise
    the identity there is still no error feedback, so the codes are RTN's of W with that column zeroed."""
    W, _, _ = problem
    H = torch.eye(256, dtype=torch.float64)
    H[5, 5] = 0
    zeroed = W.clone()
    zeroed[:, 5] = 0
    assert torch.equal(gptq_quantize(W, H, 4, 64).qdata, rtn(zeroed, 4, 64).qdata)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_sym_is_gptqs_reference_grid_with_zero_point_half_range(problem, bits):
    """sym: zero point 2^(k-1), scale = 2 max|w| / (2^k - 1) rounded up to fp16, codes round(w / s) + 2^(k-1) clamped
    to [0, 2^k - 1]. With H = I (no feedback) that is checked code for code."""
    W, _, _ = problem
    qt = gptq_quantize(W, torch.eye(256, dtype=torch.float64), bits, 64, sym=True)
    qmax = 2**bits - 1
    groups = W.reshape(-1, 64)
    scale = round_up_fp16((2 * groups.abs().amax(1) / qmax).double())
    codes = torch.clamp(torch.round(groups / scale.float()[:, None]) + 2 ** (bits - 1), 0, qmax)
    assert qt.format == f"int{bits}_sym"
    assert torch.equal(qt.scale, scale)
    assert (qt.zero_point == 2 ** (bits - 1)).all()
    assert torch.equal(codes_of(qt).view(-1, 64), codes.to(torch.uint8))


# ---------------------------------------------------------------- the storage it writes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_quantized_tensor_round_trips_to_the_solvers_weights(problem, bits, sym):
    """dequantize() must rebuild exactly the weights the solver chose: both compute (q - z) * s in fp32 from the
    same stored values, and that product is exact (q - z is an integer of <= 8 bits, s an fp16 with an 11-bit
    significand: <= 19 significant bits fit fp32's 24), so the tolerance is zero, not an fp16 scale step. A
    weight in fp16 gets that same value rounded once to fp16."""
    W, _, H = problem
    sol = gptq_solve(W, H, bits, 64, sym=sym)
    qt = gptq_quantize(W, H, bits, 64, sym=sym)
    assert torch.equal(qt.dequantize(torch.float32), sol.weight)
    assert torch.equal(codes_of(qt), sol.codes)
    half = gptq_quantize(W.half(), H, bits, 64, sym=sym)
    chosen = gptq_solve(W.half(), H, bits, 64, sym=sym).weight
    assert half.dtype == torch.float16 and torch.equal(half.dequantize(), chosen.half())

    intk = rtn(W, bits, 64)
    assert qt.scale.dtype == qt.zero_point.dtype == torch.float16
    assert qt.granularity == intk.granularity and qt.shape == intk.shape
    assert qt.nbytes == intk.nbytes == IntKConfig(bits=bits, group_size=64).storage_bytes(tuple(W.shape))
    assert qt.bits_per_param == intk.bits_per_param
    assert qt.format == f"int{bits}_{'sym' if sym else 'asym'}"


# ---------------------------------------------------------------- input checks


def test_bad_inputs_are_refused_with_the_fix(problem):
    W, _, H = problem
    with pytest.raises(ValueError, match=r"bits=5 .*\(2, 3, 4, 8\)"):
        gptq_quantize(W, H, 5, 64)
    w96 = torch.randn(8, 96)
    with pytest.raises(ValueError, match=r"group_size=64 does not divide .*in_features=96.*\[32\]"):
        gptq_quantize(w96, torch.eye(96), 4, 64)
    with pytest.raises(ValueError, match=r"shape \(256, 256\).*got \(96, 96\)"):
        gptq_quantize(W, torch.eye(96), 4, 64)
    bad = W.clone()
    bad[3, 7] = math.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        gptq_quantize(bad, H, 4, 64)
    with pytest.raises(ValueError, match="block_size"):
        gptq_quantize(W, H, 4, 64, block_size=0)
    # an indefinite "Hessian" (eigenvalues 3 and -1 per pair, diagonal 1): no dampening of 1% makes it invertible
    indefinite = torch.block_diag(*[torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)] * 128)
    with pytest.raises(ValueError, match="raise damp"):
        gptq_quantize(W, indefinite, 4, 64)


# ---------------------------------------------------------------- the Hessian


def test_hessian_accumulator_equals_the_batch_formula():
    """Two batches (one of them 3-D) give 2 X^T X / n of the concatenation. Bound: each entry is a sum of n products,
    computed two ways in float64; either sum is within gamma_(n+4) = (n + 4) eps64 (the classic summation bound, plus
    the scalings) of the exact value, relative to the sum of |products|, so their difference is within twice that."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(300, 48, generator=gen)
    b = torch.randn(4, 25, 48, generator=gen) * 3
    acc = HessianAccumulator(48)
    acc.add(a)
    acc.add(b)
    X = torch.cat((a, b.reshape(-1, 48))).double()
    n = X.shape[0]
    assert acc.samples == n == 400
    direct = 2 * X.T @ X / n
    bound = 2 * (n + 4) * EPS64 * (2 * X.abs().T @ X.abs() / n)
    assert ((acc.hessian - direct).abs() <= bound).all()
    assert acc.hessian.dtype == torch.float64


@pytest.mark.parametrize("width", [576, 1536])  # SmolLM2's two input widths: 3 and 4 panels
def test_a_wide_hessian_accumulates_in_panels_and_is_the_full_symmetric_x_t_x(width):
    """Above 384 inputs H accumulates panel by panel on and above the diagonal; the returned H is exactly
    symmetric and, in float32, within the summation bound of the float64 formula: each entry a sum of n products,
    gamma_(n+4) = (n + 4) eps32 relative to the sum of |products| (the float64 side's own error is negligible)."""
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 150, width, generator=gen), torch.randn(200, width, generator=gen) * 2
    acc = HessianAccumulator(width, torch.float32)
    acc.add(a)
    acc.add(b)
    H = acc.hessian
    assert torch.equal(H, H.T) and H.dtype == torch.float32
    X = torch.cat((a.reshape(-1, width), b)).double()
    n = X.shape[0]
    bound = (n + 4) * torch.finfo(torch.float32).eps * (2 * X.abs().T @ X.abs() / n)
    assert ((H.double() - 2 * X.T @ X / n).abs() <= bound).all()  # below the diagonal too: not left empty


def test_hessian_accumulator_checks_its_inputs():
    acc = HessianAccumulator(16)
    with pytest.raises(ValueError, match="add"):
        acc.hessian  # noqa: B018  (the property is what raises)
    with pytest.raises(ValueError, match="last dimension must be 16"):
        acc.add(torch.randn(4, 15))
    with pytest.raises(ValueError, match="NaN/Inf"):
        acc.add(torch.full((2, 16), math.inf))
