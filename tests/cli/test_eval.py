"""`python -m harness eval`: user errors are one line, found before any work. The first case runs as a real process
(the exit status and the one-line contract themselves), the second in this process (tests/conftest.py's
harness_here: the same entry point)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, harness_here


def test_eval_user_errors_are_one_line_before_work(tmp_path):
    def run(*args, here=True):
        argv = ["eval", "model=tiny-llama", "context_length=64", *args, f"output_dir={tmp_path}"]
        if here:
            return harness_here(*argv)
        return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=REPO, capture_output=True, text=True,
                              check=False)

    missing = run("data=text_file", "data.path=/nonexistent/corpus.txt", here=False)  # a real process
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "data.path='/nonexistent/corpus.txt' is not a file" in missing.stderr
    bad = run("+quantizers.bad={name: nf4, block_size: 7}")
    assert bad.returncode == 2 and "quantizers.bad: nf4.block_size=7" in bad.stderr
    assert "evaluating" not in bad.stdout  # found before the full-precision evaluation, not after
