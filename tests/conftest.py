"""Shared test settings: the repository root, hypothesis profiles and a quiet bitsandbytes.

The tests mirror the packages: tests/<package>/test_<module>.py for harness' subpackages, quantizers/ and adapters/,
tests/test_<module>.py for harness' leaf modules. Every folder is a package (an __init__.py), so equal basenames in
different folders do not clash; helpers shared by several files of a folder live in its conftest.py.

Profiles (pick with HYPOTHESIS_PROFILE=...):
  default   few examples per property, derandomized so CI runs are reproducible; keeps the suite fast
  thorough  many random examples, for hunting bugs locally (minutes)
"""

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent  # the repository root: experiments/, pyproject.toml, the packages

# bitsandbytes logs a harmless warning about an optional `kernels` package when imported on CPU
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

# deadline=None: the first example of a test pays torch's one-off kernel warm-up, which is not slowness
settings.register_profile(
    "default", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def harness_here(*args: str) -> subprocess.CompletedProcess:
    """`python -m harness *args` run in this process: harness.__main__.main() with sys.argv set and the repository
    root as working folder, as the real command has them. For the tests that are not about the process boundary
    (those keep a real `python -m harness`): no interpreter start and no imports to pay again. What it prints is
    captured; the exit status is its SystemExit's (0 when main returns), as the interpreter would turn it."""
    import harness.__main__ as entry

    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["harness", *map(str, args)]
    returncode = 0
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with mock.patch.object(sys, "argv", list(argv)), contextlib.redirect_stdout(stdout), \
                contextlib.redirect_stderr(stderr):
            try:
                entry.main()
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    returncode = exc.code or 0
                else:  # sys.exit(message): the interpreter prints the message and exits with 1
                    print(exc.code, file=sys.stderr)
                    returncode = 1
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())
