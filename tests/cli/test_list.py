"""`python -m harness list`: every quantizer with its description, from a real process."""

import subprocess
import sys

from harness.registry import QUANTIZERS
from tests.conftest import REPO


def test_harness_list_prints_every_quantizer_with_its_description():
    done = subprocess.run(
        [sys.executable, "-m", "harness", "list"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"quantizers ({len(QUANTIZERS)}):" in lines
    for entry in QUANTIZERS:
        assert any(line.split(None, 1) == [entry.name, entry.description] for line in lines), entry.name
