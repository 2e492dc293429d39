"""What makes a result self-describing: the resolved config, the code's git commit, package versions, the device.

Every command writes this beside its tables as `run.json`, so a table found later says how it was made. Sweep
records (below) are written atomically and read back through read_records, which names a damaged one and leaves
it out.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

PACKAGES = ("torch", "bitsandbytes", "transformers", "peft", "lm_eval", "hydra-core", "pandas", "scipy", "datasets",
            "safetensors", "accelerate")
REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The checked-out commit, with '+dirty' when the working tree differs from it; 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device() -> dict[str, str | int]:
    """The machine, with the fields of PEFT's method-comparison system_info (system, release, version, machine,
    processor, accelerator) besides ours."""
    uname = platform.uname()
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "system": uname.system,
            "release": uname.release, "version": uname.version, "machine": uname.machine,
            "processor": uname.processor or uname.machine,
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def run_metadata(cfg, command: str, resolved: dict | None = None) -> dict:
    """cfg: the command's composed DictConfig or its validated dataclass. resolved: what the run decided that
    the config leaves open (device=auto, compute_dtype=auto, module=auto, ...)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    meta = {"command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
            "versions": versions(), "device": device(), "config": OmegaConf.to_container(node, resolve=True)}
    if resolved:
        meta["resolved"] = resolved
    return meta


def write_run_json(out_dir: Path | str, cfg, command: str, resolved: dict | None = None) -> Path:
    path = Path(out_dir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_metadata(cfg, command, resolved), indent=2, default=str) + "\n")
    return path


# ---------------------------------------------------------------- sweep records


def config_hash(identity) -> str:
    """12 hex digits of sha256 over the canonical JSON of `identity` (keys sorted): equal configs, equal hash."""
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_atomic(path: Path | str, text: str) -> Path:
    """Write `text` so that `path` holds either its old content or all of the new, whatever kills the process:
    a temporary file in the same folder, fsync, rename over `path` (atomic on POSIX), fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)
    return path


def write_record(path: Path | str, record: dict) -> Path:
    return write_atomic(path, json.dumps(record, indent=2, default=str, allow_nan=True) + "\n")


RECORD_SCHEMA = 1  # the shape of a cell record; a record without the key predates it and has this shape
REQUIRED = {"config_hash": str, "status": str, "cell": dict, "metrics": dict}  # what every reader indexes
_SAID: set = set()  # what say_once has printed in this process


def read_json(path: Path | str) -> tuple[object, str | None]:
    """(the file's JSON value, None), or (None, why it cannot be read: empty file, not UTF-8, not JSON (...)).
    A missing file raises FileNotFoundError, as open() does."""
    data = Path(path).read_bytes()
    if not data.strip():
        return None, "empty file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"


def read_record(path: Path | str) -> tuple[dict | None, str | None]:
    """A cell record (cells/<hash>/record.json) -> (record, None), or (None, why it is damaged): unreadable
    JSON, another schema version, a field every reader needs missing or of the wrong type, or the hash of
    another cell than its folder's (a record found there would be taken for that cell's)."""
    path = Path(path)
    record, reason = read_json(path)
    if reason is not None:
        return None, reason
    if not isinstance(record, dict):
        return None, f"a JSON {json_kind(record)}, not an object"
    schema = record.get("schema", RECORD_SCHEMA)
    if schema != RECORD_SCHEMA:
        return None, f"schema {schema!r}, this harness reads {RECORD_SCHEMA}"
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return None, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    for key, kind in REQUIRED.items():
        if not isinstance(record[key], kind):
            wanted = "a string" if kind is str else "an object"
            return None, f"{key} is a JSON {json_kind(record[key])}, not {wanted}"
    if record["config_hash"] != path.parent.name:
        return None, f"config_hash {record['config_hash']} does not match its folder {path.parent.name}"
    return record, None


def json_kind(value) -> str:
    """What JSON calls the type of a parsed value (for messages)."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), "null")


def say_once(path: Path | str, line: str) -> None:
    """Print `line` about the file `path` on stderr, once per process while the file stays as it is: the
    commands read a sweep's records several times (collect, tables, report), and a damaged file is news once."""
    path = Path(path)
    try:
        stat = path.stat()
        version = (stat.st_ino, stat.st_mtime_ns)
    except FileNotFoundError:
        version = None
    key = (str(path.resolve()), version, line)
    if key not in _SAID:
        _SAID.add(key)
        print(line, file=sys.stderr, flush=True)


def damaged_record(path: Path | str, reason: str) -> None:
    path = Path(path)
    say_once(path, f"cells/{path.parent.name}/{path.name} is damaged ({reason}); the cell counts as not run")


def read_records(sweep_dir: Path | str) -> list[dict]:
    """Every readable cell record of a sweep folder (cells/<hash>/record.json), in hash order. A damaged record
    counts as absent (its cell as not run) and is named once on stderr; the others make the table."""
    records = []
    for path in sorted(Path(sweep_dir).glob("cells/*/record.json")):
        try:
            record, reason = read_record(path)
        except FileNotFoundError:  # removed since the listing (an earlier `compare` folder being rewritten)
            continue
        if reason is not None:
            damaged_record(path, reason)
        else:
            records.append(record)
    return records
