"""`python -m harness plot`: figures and report.md for a sweep folder whose grid has one rank (run in this process:
tests/conftest.py's harness_here), and a folder without records refused as one line with exit status 2 (a real
process: the exit status and the one-line contract themselves)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO, harness_here
from tests.report.conftest import BASES, record, write_sweep


def test_one_rank_skips_perplexity_vs_rank(tmp_path):
    folder = write_sweep(tmp_path / "dtypes", [record(q, "lora", 8, 0, "dtypes") for q in BASES])
    stale = folder / "figures" / "perplexity_vs_rank.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")  # a figure from an earlier state of the folder must not survive
    run = harness_here("plot", folder)
    assert run.returncode == 0, run.stderr
    assert re.search(r"skipped perplexity_vs_rank: rank takes one value \(r=8\)", run.stdout), run.stdout
    assert "skipped recovery: trainable_params takes one value" in run.stdout
    assert not stale.exists()
    assert (folder / "figures" / "weight_error_vs_perplexity.png").is_file()  # four quantizers: drawn
    report = (folder / "report.md").read_text()
    assert "perplexity_vs_rank" not in report and "figures/weight_error_vs_perplexity.png" in report


def test_cli_rejects_a_folder_without_records(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", "plot", str(tmp_path)], capture_output=True,
                         text=True, cwd=REPO, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "record.json" in run.stderr and "Traceback" not in run.stderr
