"""`python -m harness errors`: the real command, as a process, composes errors.yaml with the schemas registered at
import, writes its files (no Hydra log, no .hydra/) and exits 0."""

import subprocess
import sys

from tests.conftest import REPO


def test_cli_entry_point(tmp_path):
    # the real `python -m harness errors`: Hydra composes errors.yaml with the schemas registered at import
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "errors",
        f"output_dir={tmp_path}",
        "numel=4096",
        "sources=[normal]",
        "formats=[png]",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"summary: {tmp_path / 'summary.md'}" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".png") == [
        "ordering.md",
        "run.json",
        "summary.md",
        "weight_errors.csv",
        "weight_errors.parquet",
    ]  # no hydra log, no .hydra/
