"""Several sweeps as one sweep folder (what `python -m harness compare` tables and plots): the union of their cell
records keyed by config hash, each marked with the sweep it came from, and their shared base evaluations.

A cell's hash covers its resolved config but not where its sweep writes, so a cell run by two sweeps is kept once
(an ok record before a failed or skipped one, else the first sweep named), and evaluations that are the same (a
shared quantized base) pair up in the comparisons across sweeps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.user_error import UserError

PREFERRED = {"ok": 0, "failed": 1, "skipped": 2}  # which record of a cell in several sweeps is kept
MARKER = "compare.json"  # marks an out folder as compare's own, whose cells/ a later compare may replace


def sweep_names(dirs: list[Path]) -> list[str]:
    """What the `sweep` column calls each folder: its name, or the path as given where two names are equal."""
    names = [d.resolve().name for d in dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, dirs)]


def check_out(out: Path, dirs: list[Path]) -> None:
    """Refuse an out folder whose files compare would overwrite: one of the sweeps, inside one, or any folder
    with something in it that an earlier compare did not write (a sweep, a folder of sweeps)."""
    resolved = out.resolve()
    for d in dirs:
        if resolved == d.resolve() or d.resolve() in resolved.parents:
            raise UserError(f"--out {out} is inside the compared sweep {d}; give a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"--out {out} is not empty and not an earlier compare's (no {MARKER}); give a new folder")


def union(dirs: list[Path], names: list[str]) -> tuple[dict[str, dict], int]:
    """The sweeps' records keyed by config hash, each with `sweep` set -> (records, duplicates dropped)."""
    from harness.records import read_records

    kept, rank, dropped = {}, {}, 0
    for i, (d, name) in enumerate(zip(dirs, names)):
        for record in read_records(d):
            key = record["config_hash"]
            candidate = (PREFERRED.get(record["status"], len(PREFERRED)), i)
            if key in kept:
                dropped += 1
                if candidate >= rank[key]:
                    continue
            # a record from an earlier compare keeps the sweep it first came from
            kept[key], rank[key] = {**record, "sweep": record.get("sweep", name)}, candidate
    return kept, dropped


def materialise(out: Path, dirs: list[Path], names: list[str], records: dict[str, dict], dropped: int) -> None:
    """Write `out` as a sweep folder: cells/<hash>/record.json, every sweep's bases/*.json, and compare.json."""
    from harness.records import write_atomic, write_record

    for part in ("cells", "bases"):  # check_out made sure these are an earlier compare's
        shutil.rmtree(out / part, ignore_errors=True)
    for key, record in records.items():
        write_record(out / "cells" / key / "record.json", record)
    (out / "bases").mkdir(parents=True, exist_ok=True)
    for d in dirs:
        for base in sorted(d.glob("bases/*.json")):  # the same hash is the same evaluation: one copy
            if not (out / "bases" / base.name).exists():
                shutil.copyfile(base, out / "bases" / base.name)
    marker = {"sweeps": {n: str(d) for n, d in zip(names, dirs)}, "cells": len(records),
              "duplicates_dropped": dropped}
    write_atomic(out / MARKER, json.dumps(marker, indent=2) + "\n")
