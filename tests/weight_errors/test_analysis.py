"""harness.weight_errors.analysis: the metrics' identities, bits per parameter as the quantizer reports them, a
quantizer that refuses a shape skipped and reported; the expected MSE of blockwise 4-bit codes on N(0, 1) weights
(numerical integration) against measurement and quadrature."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from harness.registry import QUANTIZERS
from harness.weight_errors.analysis import analyse, conditional_sq_error, expected_mse
from harness.weight_errors.run import errors_config
from harness.weight_errors.sources import SOURCES
from tests.weight_errors.conftest import CODES, _compose


def test_metric_identities(small_run):
    conf, _, _, df = small_run
    wide = df.pivot_table(index=["source", "tensor", "quantizer"], columns="metric", values="value")
    tensors = {(s, t): w for s in conf.sources for t, w in SOURCES[s].load(conf)}
    for (source, tensor, _), row in wide.iterrows():
        w = tensors[(source, tensor)].double()
        signal = w.pow(2).mean().item()
        # all are float64 reductions of the same numbers: they agree to ~1e-12 relative, so 1e-9 is loose
        assert row["sqnr_db"] == pytest.approx(10 * math.log10(signal / row["mse"]), rel=1e-9)
        assert row["rmse"] == pytest.approx(math.sqrt(row["mse"]), rel=1e-9)
        assert row["rel_frobenius"] == pytest.approx(10 ** (-row["sqnr_db"] / 20), rel=1e-9)
        assert row["max_abs_error"] ** 2 >= row["mse"]


def test_bits_per_param_is_what_the_quantizer_reports(small_run):
    conf, _, _, df = small_run
    bits = df[df["metric"] == "bits_per_param"].set_index(["source", "tensor", "quantizer"])["value"]
    for source in ("normal", "tiny_llama"):
        for tensor, w in SOURCES[source].load(conf)[:3]:
            for label, qconf in conf.quantizers.items():
                qt = qconf.build().quantize(w.float())
                assert bits[(source, tensor, label)] == qt.bits_per_param  # both exact byte counts


def test_quantizer_that_refuses_a_shape_is_skipped_and_reported():
    # rows of 4104 are not a multiple of intk's group of 32; nf4's blocks run across rows and do not care
    conf = errors_config(_compose("numel=16416", "synthetic_cols=4104", "sources=[normal]"))
    quantizers = {label: conf.quantizers[label].build() for label in ("nf4", "int4_asym_g32")}
    result = analyse(conf, quantizers)
    assert (
        len(result.skipped) == 1
        and "int4_asym_g32" in result.skipped[0]
        and "group_size" in result.skipped[0]
    )
    assert {r["quantizer"] for r in result.records} == {"nf4"}


# ---------------------------------------------------------------- the expected MSE on N(0, 1) weights


@pytest.mark.parametrize("block_size", [32, 256])
@pytest.mark.parametrize("code", CODES)
def test_integral_matches_empirical_mse(code, block_size):
    quantizer = QUANTIZERS.get(code)(block_size=block_size).build()
    w = torch.randn(1 << 22, generator=torch.Generator().manual_seed(1))
    err = quantizer.quantize(w).dequantize(torch.float32).double() - w.double()
    per_block = err.pow(2).reshape(-1, block_size).mean(dim=1)  # blocks are iid: their MSEs are iid draws
    empirical = per_block.mean().item()
    stderr = per_block.std().item() / math.sqrt(per_block.numel())
    expected = expected_mse(quantizer.levels().double().numpy(), block_size)
    # Tolerance from the sample size: the mean of 2**22 / B iid block MSEs is normal to a very good
    # approximation, so 5 standard errors fails by chance with probability ~6e-7. One standard error is
    # < 0.3% of the MSE here: at B=32, dropping the (B-1)/B factor (a 3% shift) lands ~30 of them away.
    assert abs(empirical - expected) < 5 * stderr, (code, block_size, empirical, expected, stderr)
    assert stderr < 0.003 * expected  # the claim above about the standard error's size


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("m", [0.7, 2.4, 4.0])
def test_closed_form_cells_match_quadrature(code, m):
    levels = QUANTIZERS.get(code)().build().levels().double().numpy()
    edges = m * np.concatenate(([-1.0], (levels[:-1] + levels[1:]) / 2, [1.0]))
    by_quad = sum(
        integrate.quad(lambda x, v=m * v: (x - v) ** 2 * norm.pdf(x), a, b, epsabs=0, epsrel=1e-12)[0]
        for a, b, v in zip(edges[:-1], edges[1:], levels)
    )
    # both are exact up to float64 rounding; quad's own error estimate on these smooth cells is ~1e-14
    assert conditional_sq_error(levels, m) == pytest.approx(by_quad, rel=1e-9, abs=1e-15)


def test_outer_integral_against_block_max_law():
    # With the single level 0, each non-max value's error is the value itself, so expected_mse gives
    # (1/B) E[sum of the B-1 non-max x^2] = (B - E[M^2]) / B, since all B squares sum to B on average.
    # E[M^2] comes independently from M's CDF (2 Phi(m) - 1)^B: E[M^2] = integral 2m (1 - CDF(m)) dm.
    # This checks the density f_M, the truncation and the (B-1)/B factor without any sampling.
    b = 64
    e_m2 = integrate.quad(lambda m: 2 * m * (1 - (2 * norm.cdf(m) - 1) ** b), 0, 12, limit=200)[0]
    # both sides are quadratures accurate to ~1e-10 relative
    assert expected_mse(np.array([0.0]), b) == pytest.approx(1 - e_m2 / b, rel=1e-8)
