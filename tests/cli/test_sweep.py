"""`python -m harness sweep`: user errors stop before any work, as one line on stderr and exit status 2.

The cases run the command in this process (tests/conftest.py's harness_here: the same entry point, no interpreter to
start); the last test runs one of them as a real process, for the exit status and the one-line contract themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sweep.conftest import TINY, sweep, sweep_here


@pytest.fixture(scope="module")
def bad_grid(tmp_path_factory) -> Path:
    """A search-path folder with a grid whose YAML is cut off mid-list."""
    root = tmp_path_factory.mktemp("grids")
    (root / "grid").mkdir()
    (root / "grid" / "broken.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n    params:\n"
                                               "      adapter.rank: [1, 2\n")
    (root / "empty.txt").write_text("")
    return root


@pytest.mark.parametrize("args,expected", [
    (["adapter=lorra"], "Did you mean adapter=lora?"),
    (["adapter.rnk=4"], "adapter.rnk is not a field of LoraConfig. Did you mean rank?"),
    (["+grid=rankz"], "Did you mean grid=ranks?"),
    (["+grid=broken", "hydra.searchpath=[file://{root}]"], "broken.yaml"),
    (["data=text_file", "data.path={root}/empty.txt"], "empty"),
    (["adapter.rank=1,0"], "lora.rank=0 is not accepted"),
])
def test_user_errors_stop_before_any_work(bad_grid, tmp_path, args, expected):
    args = [a.format(root=bad_grid) for a in args]
    proc = sweep_here(*args, *TINY, out=tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_a_user_error_exits_2_with_one_line_from_a_real_process(tmp_path):
    proc = sweep("adapter=lorra", *TINY, out=tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Did you mean adapter=lora?" in last
    assert proc.stderr.strip() == last  # the whole of stderr is that one line
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
