"""A damaged sweep folder: records truncated, overwritten with random bytes, of another schema version or missing
fields, an emptied shared evaluation, a claim and a lock left by a killed process. `collect` and `table` make the
table from the rest and name each damaged file once; every record damaged is one line and exit status 2; the
same `sweep` command run again runs those cells, replaces the files and ends with the undamaged sweep's table; a
cell another live process runs is left to it and waited for.

Each test damages its own copy of the session's ranks sweep (tests/sweep/conftest.py), in this process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pandas as pd
import pytest

from harness import records
from harness.records import read_record, read_records, write_record
from harness.sweep import claims
from tests.conftest import harness_here
from tests.sweep.conftest import CORPUS, TINY, sweep_here, values

DAMAGES = {  # rank -> (how its record is damaged, the reason named)
    1: ("truncated", "not JSON (Unterminated string starting at: line 3 column 11)"),  # cut in "time"
    2: ("random bytes", "not UTF-8"),
    4: ("schema 7", "schema 7, this harness reads 1"),
    8: ("missing fields", "missing fields status, metrics"),
}


@pytest.fixture(autouse=True)
def fresh_process_messages(monkeypatch):
    monkeypatch.setattr(records, "_SAID", set())  # each command here names the damage as a fresh process would


@pytest.fixture
def copy(ranks_sweep, tmp_path):
    """A copy of the ranks sweep -> (folder, {rank: config hash})."""
    folder = tmp_path / "ranks"
    shutil.copytree(ranks_sweep, folder)
    return folder, {r["cell"]["rank"]: r["config_hash"] for r in read_records(folder)}


def damage(path, how: str) -> None:
    text = path.read_text()
    if how == "truncated":  # a copy cut short
        path.write_text(text[:40])
    elif how == "random bytes":
        path.write_bytes(bytes(range(128, 256)) * 4)
    elif how == "schema 7":
        path.write_text(json.dumps(json.loads(text) | {"schema": 7}))
    elif how == "missing fields":
        path.write_text(json.dumps({k: v for k, v in json.loads(text).items() if k not in ("status", "metrics")}))


def named(stderr: str) -> list[str]:
    """The lines naming a file of the sweep folder (not a library's warnings), sorted."""
    return sorted(line for line in stderr.splitlines() if line.startswith(("cells/", "bases/")))


def damaged_lines(hashes: dict[int, str]) -> list[str]:
    return [f"cells/{hashes[rank]}/record.json is damaged ({reason}); the cell counts as not run"
            for rank, (_, reason) in DAMAGES.items()]


def test_collect_and_table_use_the_readable_records_and_name_the_others_once(copy):
    folder, hashes = copy
    for rank, (how, _) in DAMAGES.items():
        damage(folder / "cells" / hashes[rank] / "record.json", how)
    run = harness_here("collect", folder)
    assert run.returncode == 0, run.stderr
    assert named(run.stderr) == sorted(damaged_lines(hashes))  # each exactly once
    assert set(pd.read_csv(folder / "results.csv").cell) == {hashes[64]}  # the table: the one readable record
    records._SAID.clear()  # `table` in a process of its own: collect, the comparisons and report.md each read
    run = harness_here("table", folder)
    assert run.returncode == 0, run.stderr
    assert named(run.stderr) == sorted(damaged_lines(hashes))


def test_every_record_damaged_is_one_line_and_exit_status_2(copy):
    folder, hashes = copy
    for rank in hashes:
        damage(folder / "cells" / hashes[rank] / "record.json", "truncated")
    run = harness_here("plot", folder)
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == len(hashes) + 1 and all(" is damaged (not JSON " in line for line in lines[:-1])
    assert lines[-1] == (f"error: every record under {folder}/cells/ is damaged (listed above); the sweep's "
                         "command run again runs those cells")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_resumed_sweep_runs_the_damaged_cells_again(copy, ranks_sweep):
    folder, hashes = copy
    for rank, (how, _) in DAMAGES.items():
        damage(folder / "cells" / hashes[rank] / "record.json", how)
    # rank 64: killed mid-cell, leaving its claim (and no record)
    (folder / "cells" / hashes[64] / "record.json").unlink()
    pid, host = dead_pid(), socket.gethostname()
    (folder / "cells" / hashes[64] / claims.CLAIM).write_text(json.dumps({"pid": pid, "host": host}))
    reference = next(p for p in (folder / "bases").glob("*.json") if '"reference"' in p.read_text())
    reference.write_text("")  # the shared full-precision evaluation, emptied
    reference.with_suffix(".lock").write_text(json.dumps({"pid": pid, "host": host}))  # a lock left by the dead

    run = sweep_here("+grid=ranks", *TINY, *CORPUS, out=folder)
    assert named(run.stderr) == sorted(damaged_lines(hashes) + [
        f"bases/{reference.name} is damaged (empty file); computed again",
        f"cells/{hashes[64]}/claim.json is stale (pid {pid} on {host} is gone); the cell counts as not run"])
    for rank, key in hashes.items():
        record, reason = read_record(folder / "cells" / key / "record.json")
        assert reason is None and record["status"] == "ok" and record["pid"] == os.getpid(), rank  # run again
        assert record["schema"] == records.RECORD_SCHEMA and record["host"] == host
    assert len(list(folder.glob("cells/*/record.json"))) == len(hashes)  # one record each
    assert not list(folder.glob("cells/*/claim.json")) and not list(folder.glob("**/*.tmp"))
    assert "value" in json.loads(reference.read_text())  # computed again and written whole
    pd.testing.assert_frame_equal(values(folder), values(ranks_sweep))


def test_a_cell_another_live_process_runs_is_left_to_it_and_waited_for(copy, monkeypatch):
    folder, hashes = copy
    path = folder / "cells" / hashes[64] / "record.json"
    theirs = json.loads(path.read_text())
    path.unlink()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the other sweep
    claim = path.parent / claims.CLAIM
    claim.write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))

    def their_cell_ends():
        write_record(path, theirs)
        claim.unlink()

    real = claims.wait_for_others

    def waits_while_they_finish(sweep_dir, cells, poll=claims.POLL):
        threading.Timer(0.5, their_cell_ends).start()
        real(sweep_dir, cells, poll=0.05)

    monkeypatch.setattr(claims, "wait_for_others", waits_while_they_finish)
    try:
        run = sweep_here("+grid=ranks", *TINY, *CORPUS, out=folder)
    finally:
        owner.kill()
        owner.wait()
    who = f"pid {owner.pid} on {socket.gethostname()}"
    lines = run.stdout.splitlines()
    assert f"[cell 4] run by {who}; left to it" in lines
    assert lines.count(f"waiting for 1 cell run by other processes: {hashes[64]} ({who})") == 1
    assert json.loads(path.read_text())["time"] == theirs["time"]  # their record, not run again here
    assert "5 of 5 cells recorded" in run.stdout
