"""harness.weight_errors.sources: a model's linear weights, and the synthetic sources' documented variance."""

import pytest
from torch import nn

from harness.weight_errors.run import errors_config
from harness.weight_errors.sources import SOURCES, model_weights
from tests.weight_errors.conftest import _compose


def test_model_weights_yields_every_linear():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2, bias=False)), nn.Embedding(3, 4)
    )
    names = [(name, tuple(w.shape)) for name, w in model_weights(model)]
    assert names == [("0", (8, 4)), ("2.0", (2, 8))]
    assert not any(w.requires_grad for _, w in model_weights(model))


def test_synthetic_sources_have_the_documented_variance():
    conf = errors_config(_compose("numel=1048576"))
    for source in ("normal", "laplace", "student_t"):
        ((_, w),) = SOURCES[source].load(conf)
        assert w.shape == (256, 4096)
        # 2**20 draws: the sample variance's standard error is sqrt((kurtosis - 1) / n), ~0.003 for the normal
        # and Laplace; Student-t(3) has infinite kurtosis, so its sample variance is erratic: 10% for all
        assert w.double().var().item() == pytest.approx(1.0, rel=0.1), source
    ((_, w),) = SOURCES["outliers"].load(conf)
    n_outliers = (w.abs() >= conf.outlier_magnitude).sum().item()
    # the injected ones, plus N(0, 1) draws beyond 6 sigma (expected 2e-9 * 2**20 ~ 0.002)
    assert n_outliers == round(conf.outlier_fraction * w.numel())
