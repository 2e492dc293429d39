"""harness.report.markdown: report.md links only files that exist, lists the failed cell's first error line, and
says how to get what is missing."""

from __future__ import annotations

import re
import shutil

import pytest

from harness.registry import FIGURES
from harness.report.markdown import write_report
from tests.report.conftest import record, write_sweep


@pytest.fixture
def plotted(plotted, tmp_path):
    """The session's plotted sweep, copied: the report test writes its tables and report.md into the folder."""
    folder, result, lines = plotted
    copied = tmp_path / folder.name
    shutil.copytree(folder, copied)
    return copied, result, lines


def test_report_links_existing_files_and_lists_the_failed_cell(plotted):
    folder, result, _ = plotted
    (folder / "tables").mkdir(exist_ok=True)
    (folder / "tables" / "summary.md").write_text("# summary\n")  # comparisons.md deliberately absent
    text = write_report(folder).read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert targets and all((folder / t).is_file() for t in targets), targets
    assert "tables/summary.md" in targets and "tables/comparisons.md" not in targets
    assert "python -m harness table" in text  # says how to get the missing table
    for name in FIGURES.names():  # every PNG drawn (pareto draws one per quality and cost)
        pngs = [p.name for p in result.written[name] if p.suffix == ".png"]
        assert pngs and all(f"figures/{png}" in targets for png in pngs)
    assert text.startswith("# Sweep ranks")
    assert "20 cells (19 ok, 1 failed)" in text
    assert "int4-lokr-4-0" in text and "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in text
    assert "more detail" not in text  # the error's first line only
    assert "Spearman" in text


def test_report_without_figures_or_tables(tmp_path):
    folder = write_sweep(tmp_path / "bare", [record("nf4", "lora", 8, 0, "ranks")])
    text = write_report(folder).read_text()
    assert all((folder / target).is_file() for target in re.findall(r"\]\(([^)]+)\)", text))
    assert "python -m harness table" in text and "python -m harness plot" in text
    assert "![" not in text and "Spearman" not in text
