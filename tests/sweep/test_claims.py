"""harness.sweep.claims: a cell claimed by a live process is left to it, a claim of a gone process is broken by
exactly one of the processes that find it, the owner's heartbeat keeps its claim fresh, and two real `sweep`
processes on one folder run every cell once between them, with the table of one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from harness import records
from harness.sweep import claims
from tests.conftest import REPO
from tests.sweep.conftest import CORPUS, RANKS, TINY, values


@pytest.fixture(autouse=True)
def fresh_process_messages(monkeypatch):
    monkeypatch.setattr(records, "_SAID", set())  # each test reads its messages as a fresh process would


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: no process has its pid (until the kernel hands it out again, far later)
    return proc.pid


def write_claim(cell_dir, pid: int, host: str | None = None) -> dict:
    claim = {"pid": pid, "host": host or socket.gethostname(), "since": "2026-01-01T00:00:00+0000"}
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / claims.CLAIM).write_text(json.dumps(claim))
    return claim


def test_a_live_claim_is_left_to_its_owner(tmp_path, sleeper, capsys):
    theirs = write_claim(tmp_path / "abc123", sleeper.pid)
    assert claims.take(tmp_path / "abc123") == theirs
    assert json.loads((tmp_path / "abc123" / claims.CLAIM).read_text()) == theirs  # untouched
    claims.release(tmp_path / "abc123")  # not ours: left alone
    assert (tmp_path / "abc123" / claims.CLAIM).exists()
    assert capsys.readouterr().err == ""


def test_a_claim_of_a_gone_process_is_named_once_and_taken(tmp_path, capsys):
    pid = dead_pid()
    write_claim(tmp_path / "abc123", pid)
    assert claims.owner(tmp_path / "abc123") is None
    assert claims.take(tmp_path / "abc123") is None
    claim = json.loads((tmp_path / "abc123" / claims.CLAIM).read_text())
    assert (claim["pid"], claim["host"]) == (os.getpid(), socket.gethostname())
    host = socket.gethostname()
    assert capsys.readouterr().err == (f"cells/abc123/claim.json is stale (pid {pid} on {host} is gone); "
                                       "the cell counts as not run\n")
    claims.release(tmp_path / "abc123")
    assert not (tmp_path / "abc123" / claims.CLAIM).exists()


def test_a_claim_from_another_host_stands_until_its_heartbeat_stops(tmp_path, capsys):
    theirs = write_claim(tmp_path / "abc123", 12345, host="node-elsewhere")
    assert claims.owner(tmp_path / "abc123") == theirs  # its pid cannot be checked from here: assumed live
    old = time.time() - claims.STALE_AFTER - 60
    os.utime(tmp_path / "abc123" / claims.CLAIM, (old, old))
    assert claims.take(tmp_path / "abc123") is None
    assert re.fullmatch(r"cells/abc123/claim\.json is stale \(pid 12345 on node-elsewhere has not touched it for "
                        r"6[56]\d s\); the cell counts as not run\n", capsys.readouterr().err)


@pytest.mark.parametrize(("content", "reason"), [
    (b"\x00\x9f\x92\x96", "not UTF-8"), (b"", "empty file"), (b'{"pid": 0, "host": "h"}', "pid 0 is not a process id"),
])
def test_a_damaged_claim_is_named_and_taken(tmp_path, capsys, content, reason):
    (tmp_path / "abc123").mkdir()
    (tmp_path / "abc123" / claims.CLAIM).write_bytes(content)
    assert claims.take(tmp_path / "abc123") is None
    assert capsys.readouterr().err == f"cells/abc123/claim.json is damaged ({reason}); the cell counts as not run\n"


def test_the_claim_is_removed_when_the_cell_raises(tmp_path):
    with pytest.raises(RuntimeError), claims.claimed(tmp_path / "abc123") as owner:
        assert owner is None and (tmp_path / "abc123" / claims.CLAIM).exists()
        raise RuntimeError("the cell crashed")
    assert not (tmp_path / "abc123" / claims.CLAIM).exists()


def test_the_heartbeat_keeps_the_claim_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT", 0.05)
    with claims.claimed(tmp_path / "abc123"):
        path = tmp_path / "abc123" / claims.CLAIM
        os.utime(path, (0, 0))  # as if untouched since 1970
        deadline = time.time() + 10
        while path.stat().st_mtime == 0 and time.time() < deadline:
            time.sleep(0.05)
        # touched again, recently: a 0.05 s heartbeat beats within the loop's 10 s, which only bounds a loaded
        # machine; the 1970 mtime is 56 years old, so any fresh touch passes and none fails
        assert time.time() - path.stat().st_mtime < 10


def race(cell_dir, barrier, results) -> None:
    barrier.wait()  # all at once
    results.put((os.getpid(), claims.take(cell_dir) is None))
    barrier.wait()  # stay alive until every racer has looked: a winner that exited would leave a stale claim


def test_one_of_several_processes_breaks_a_stale_claim(tmp_path):
    write_claim(tmp_path / "abc123", dead_pid())
    context = multiprocessing.get_context("fork")  # the racers need nothing but this module's functions
    barrier, results = context.Barrier(4), context.Queue()
    racers = [context.Process(target=race, args=(tmp_path / "abc123", barrier, results)) for _ in range(4)]
    for p in racers:
        p.start()
    outcomes = [results.get(timeout=60) for _ in racers]
    for p in racers:
        p.join(timeout=60)
    winners = [pid for pid, won in outcomes if won]
    assert len(winners) == 1
    assert json.loads((tmp_path / "abc123" / claims.CLAIM).read_text())["pid"] == winners[0]


def test_waiting_ends_when_the_owner_is_gone(tmp_path, sleeper, capsys):
    write_claim(tmp_path / "cells" / "abc123", sleeper.pid)
    # killed mid-cell: no record, its claim left behind (and reaped, as its parent shell would: a zombie's pid
    # still answers)
    threading.Timer(0.5, lambda: (sleeper.kill(), sleeper.wait())).start()
    claims.wait_for_others(tmp_path, ["abc123", "def456"], poll=0.05)
    out = capsys.readouterr()
    host = socket.gethostname()
    assert out.out == f"waiting for 1 cell run by other processes: abc123 (pid {sleeper.pid} on {host})\n"
    assert out.err == (f"cells/abc123/claim.json is stale (pid {sleeper.pid} on {host} is gone); "
                       "the cell counts as not run\n")


# ---------------------------------------------------------------- two sweeps on one folder


def test_two_sweeps_on_one_folder_run_each_cell_once(ranks_sweep, tmp_path):
    """Two `python -m harness sweep` processes (two SLURM arrays, a job submitted twice) on one fresh folder,
    started a second apart: every cell runs once, in one of them, and both end with the whole table."""
    command = [sys.executable, "-m", "harness", "sweep", "+grid=ranks", *TINY, *CORPUS, f"output_dir={tmp_path}"]
    logs = [tmp_path.parent / f"{tmp_path.name}-{i}.log" for i in (0, 1)]
    procs = []
    for log in logs:
        with open(log, "w") as f:
            procs.append(subprocess.Popen(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT))
        time.sleep(1.0)
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            p.kill()
    outputs = [log.read_text() for log in logs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    ran = {p.pid: re.findall(r"^\[cell \d+\] ok: .* ([0-9a-f]{12})$", out, re.MULTILINE)
           for p, out in zip(procs, outputs)}  # a cell kept from before says "ok (done before; kept)"
    runs = [h for hashes in ran.values() for h in hashes]
    recorded = {r["config_hash"]: r for r in records.read_records(tmp_path)}
    assert sorted(runs) == sorted(recorded) and len(recorded) == len(RANKS)  # each cell ran exactly once
    for pid, hashes in ran.items():
        assert all(recorded[h]["pid"] == pid and recorded[h]["host"] == socket.gethostname() for h in hashes)
    # each process took cells (the second arrives while the first is in its first cell, which also computes
    # the shared evaluations)
    assert all(ran.values()), ran
    assert not list(tmp_path.glob("cells/*/claim.json"))  # every claim released
    pd.testing.assert_frame_equal(values(tmp_path), values(ranks_sweep))
