"""`python -m harness table`: bad input exits 2 with one line (the command's main in this process)."""

from __future__ import annotations

import pytest

from tests.report.conftest import table


@pytest.mark.parametrize("args", [["{empty}"], ["{empty}/nowhere"], []])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        table(monkeypatch, *(a.format(empty=tmp_path) for a in args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "sweep" in err
