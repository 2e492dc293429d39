"""harness.report.figures: every registered figure is written (PNG and PDF) from a synthetic sweep, and the printed
Spearman correlation is scipy's."""

from __future__ import annotations

import re

import pytest
from scipy import stats

from harness.registry import FIGURES
from tests.report.conftest import BASES, FULL_PRECISION


def test_every_figure_is_written(plotted):
    folder, result, lines = plotted
    assert set(result.written) == set(FIGURES.names()), result.skipped
    for name in FIGURES.names():
        # a figure is <name>.png|pdf; pareto writes one pair of files per (quality, cost) pair instead
        stems = {p.stem for p in result.written[name]} if name == "pareto" else {name}
        assert stems
        for stem in stems:
            for fmt in ("png", "pdf"):
                path = folder / "figures" / f"{stem}.{fmt}"
                assert path.is_file() and path.stat().st_size > 1000, path
        assert any(line.startswith(f"wrote {name}") for line in lines)
    assert (folder / "results.parquet").is_file()  # collected afresh


def test_printed_spearman_matches_scipy(plotted):
    _, result, lines = plotted
    sqnr = [BASES[q][0] for q in BASES]
    increase = [(BASES[q][1] / FULL_PRECISION - 1) * 100 for q in BASES]
    expected = stats.spearmanr(sqnr, increase)
    line = next(x for x in lines if "Spearman rho" in x)
    rho, p, n = re.search(r"Spearman rho = (-?[\d.]+) \(p = ([\d.e-]+), n = (\d+)", line).groups()
    # the line prints rho with 3 decimals (rounding: at most 5e-4) and p with 3 significant digits (5e-3 relative)
    assert float(rho) == pytest.approx(expected.statistic, abs=5e-4)
    assert float(p) == pytest.approx(expected.pvalue, rel=5e-3)
    assert int(n) == len(BASES)  # one point per base: the 16 NF4 cells count once
    assert result.spearman[0] == pytest.approx(expected.statistic)
