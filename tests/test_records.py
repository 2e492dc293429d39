"""harness.records: atomic writes keep the old content when interrupted."""

from __future__ import annotations

import json
import os

import pytest

from harness.records import write_atomic


def test_write_atomic_keeps_the_old_content_when_interrupted(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "record.json", '{"status": "ok"}')

    def interrupted(*args):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, '{"status": "fa')
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary file left behind
