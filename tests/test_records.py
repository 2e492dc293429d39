"""harness.records: atomic writes keep the old content when interrupted; a damaged record says why and counts as
absent."""

from __future__ import annotations

import json
import os

import pytest

from harness import records
from harness.records import RECORD_SCHEMA, read_record, read_records, write_atomic, write_record


def test_write_atomic_keeps_the_old_content_when_interrupted(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "record.json", '{"status": "ok"}')

    def interrupted(*args):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, '{"status": "fa')
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary file left behind


# ---------------------------------------------------------------- damaged records

GOOD = {"config_hash": "abc123", "status": "ok", "cell": {"rank": 1}, "metrics": {"perplexity_after": 20.0}}


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (b'{"config_hash": "abc1', "not JSON (Unterminated string starting at: line 1 column 17)"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2]", "a JSON array, not an object"),
    (json.dumps(GOOD | {"schema": 7}).encode(), "schema 7, this harness reads 1"),
    (json.dumps({"cell": {}, "metrics": {}}).encode(), "missing fields config_hash, status"),
    (json.dumps(GOOD | {"cell": None}).encode(), "cell is a JSON null, not an object"),
    (json.dumps(GOOD | {"config_hash": "def456"}).encode(), "config_hash def456 does not match its folder abc123"),
])
def test_a_damaged_record_says_why(tmp_path, content, reason):
    path = tmp_path / "cells" / "abc123" / "record.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_record(path) == (None, reason)


def test_a_record_without_a_schema_version_is_read_as_the_current_one(tmp_path):
    path = write_record(tmp_path / "cells" / "abc123" / "record.json", GOOD)  # as every record before the key
    assert read_record(path) == (GOOD, None)
    assert RECORD_SCHEMA == 1  # a new version must say how older records are read, not drop them


def test_read_records_names_each_damaged_file_once_and_returns_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(records, "_SAID", set())  # as in a fresh process
    write_record(tmp_path / "cells" / "abc123" / "record.json", GOOD)
    damaged = tmp_path / "cells" / "ffff00" / "record.json"
    damaged.parent.mkdir()
    damaged.write_text('{"status": "o')
    line = ("cells/ffff00/record.json is damaged (not JSON (Unterminated string starting at: line 1 column 12)); "
            "the cell counts as not run\n")
    assert read_records(tmp_path) == [GOOD]
    assert read_records(tmp_path) == [GOOD]  # collect, the tables and the report each read the records
    assert capsys.readouterr().err == line
    damaged.write_text('{"status": "o')  # written again (the same damage): news again
    os.utime(damaged, ns=(0, 0))  # a new modification time, whatever the filesystem's clock resolution
    assert read_records(tmp_path) == [GOOD]
    assert capsys.readouterr().err == line
