"""harness.report.figures_quality: the recovery share, by hand."""

from __future__ import annotations

import pytest

from harness.report.figures_quality import recovery_share


def test_recovery_share_by_hand():
    # before 30, after 26, full precision 20: 4 of the 10 lost perplexity points won back
    assert recovery_share(30.0, 26.0, 20.0) == pytest.approx(0.4)
    assert recovery_share(30.0, 18.0, 20.0) == pytest.approx(1.2)  # better than full precision
    assert recovery_share(30.0, 31.0, 20.0) == pytest.approx(-0.1)  # fine-tuning made it worse
    assert recovery_share(20.0, 19.0, 20.0) != recovery_share(20.0, 19.0, 20.0)  # no loss: NaN, not inf
    assert recovery_share(20.000001, 19.0, 20.0) != recovery_share(20.000001, 19.0, 20.0)
    assert recovery_share(float("nan"), 19.0, 20.0) != recovery_share(float("nan"), 19.0, 20.0)
