"""Which process is running a cell, so that two sweeps on one output_dir split the cells instead of both running
every one: two SLURM arrays, or a job submitted again while the first still runs.

A process about to run a cell claims it: cells/<hash>/claim.json, {"pid", "host", "since"}. Another process that
finds a live claim leaves the cell to its owner and takes the next one; the owner removes the claim once the
record is written, also when the cell failed.

A claim is stale, and the cell free again, when its owner is gone: on this host, no process has its pid; on any
host, its heartbeat stopped (the owner touches the file every HEARTBEAT seconds, so a claim not touched for
STALE_AFTER was left by a process killed on another machine, or names a pid now reused by another process).

Every decision (read the claim, judge it, break a stale one, write ours) is taken under an exclusive flock on
cells/<hash>/claim.lock, so two processes that both find a stale claim cannot both break it and both run the cell.
The kernel releases a killed process's flock, so the lock file itself is never stale; the claim is written by
temporary file and rename, so it is never half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness.records import json_kind, read_json, read_record, say_once, write_atomic

CLAIM = "claim.json"
GUARD = "claim.lock"
HEARTBEAT = 60.0  # seconds between the owner's touches of its claim
# a claim untouched this long is stale: ten missed heartbeats, a margin for a slow shared filesystem and for
# clocks that differ between the machines of a cluster
STALE_AFTER = 600.0
POLL = 2.0  # seconds between looks at the cells other processes still run


def this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def owner(cell_dir: Path) -> dict | None:
    """The live claim on the cell {"pid", "host", "since"}, or None: unclaimed, or a claim that is stale or
    damaged (named once on stderr; the cell counts as not run)."""
    path = cell_dir / CLAIM
    try:
        claim, reason = read_json(path)
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if reason is None:
        reason = malformed(claim)
    name = f"cells/{cell_dir.name}/{CLAIM}"
    if reason is not None:
        say_once(path, f"{name} is damaged ({reason}); the cell counts as not run")
        return None
    who = f"pid {claim['pid']} on {claim['host']}"
    if claim["host"] == socket.gethostname() and not alive(claim["pid"]):
        say_once(path, f"{name} is stale ({who} is gone); the cell counts as not run")
        return None
    if age > STALE_AFTER:
        say_once(path, f"{name} is stale ({who} has not touched it for {age:.0f} s); the cell counts as not run")
        return None
    return claim


def malformed(claim) -> str | None:
    if not isinstance(claim, dict):
        return f"a JSON {json_kind(claim)}, not an object"
    pid, host = claim.get("pid"), claim.get("host")
    if type(pid) is not int or pid <= 0:  # os.kill(0 or less) would signal a whole process group
        return f"pid {pid!r} is not a process id"
    if not isinstance(host, str) or not host:
        return f"host {host!r} is not a host name"
    return None


def mine(claim: dict) -> bool:
    return {k: claim[k] for k in ("pid", "host")} == this_process()


@contextlib.contextmanager
def guard(cell_dir: Path) -> Iterator[None]:
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / GUARD, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the kernel when the process dies
        yield


def take(cell_dir: Path) -> dict | None:
    """Claim the cell for this process -> None; or, when a live process holds it, that process's claim."""
    with guard(cell_dir):
        held = owner(cell_dir)
        if held is not None and not mine(held):
            return held
        claim = this_process() | {"since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(cell_dir / CLAIM, json.dumps(claim) + "\n")  # replaces a stale or damaged claim
    return None


def release(cell_dir: Path) -> None:
    """Remove this process's claim (a claim that is not ours is left alone)."""
    with guard(cell_dir):
        held = owner(cell_dir)
        if held is not None and mine(held):
            (cell_dir / CLAIM).unlink()


@contextlib.contextmanager
def claimed(cell_dir: Path) -> Iterator[dict | None]:
    """Hold the cell's claim while the body runs -> yields None, and the claim is kept alive by a heartbeat and
    removed after the body, whatever it raised; or yields the live owner's claim, and nothing is held."""
    held = take(cell_dir)
    if held is not None:
        yield held
        return
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat, args=(cell_dir / CLAIM, stop), daemon=True)
    beat.start()
    try:
        yield None
    finally:
        stop.set()
        beat.join()
        release(cell_dir)


def heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)


def wait_for_others(sweep_dir: Path, hashes: list[str], poll: float = POLL) -> None:
    """Return once none of the cells `hashes` that lack a finished record is claimed by another live process: a
    sweep that ran its share of the cells waits for the rest, so that it, too, ends with the whole table. Says
    once which cells it waits for; a claim that turns stale (its owner killed) stops the wait for that cell, which
    then counts as not run."""
    pending = [h for h in hashes if not finished(sweep_dir / "cells" / h / "record.json")]
    said = False
    while True:
        held = {h: c for h in pending if (c := owner(sweep_dir / "cells" / h)) is not None and not mine(c)}
        if not held:
            return
        if not said:
            waits = ", ".join(f"{h} (pid {c['pid']} on {c['host']})" for h, c in held.items())
            print(f"waiting for {len(held)} cell{'s' if len(held) > 1 else ''} run by other processes: {waits}",
                  flush=True)
            said = True
        pending = list(held)
        time.sleep(poll)


def finished(path: Path) -> bool:
    """A readable record that is not `failed` (a failed cell may be running again: sweep.rerun_failed)."""
    try:
        record, _ = read_record(path)
    except FileNotFoundError:
        return False
    return record is not None and record["status"] != "failed"
