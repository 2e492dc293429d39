"""What makes a result self-describing: the resolved config, the code's git commit, package versions, the device.

Every command writes this beside its tables as `run.json`, so a table found later says how it was made.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
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


def read_records(sweep_dir: Path | str) -> list[dict]:
    """Every cell record of a sweep folder (cells/<hash>/record.json), in hash order."""
    return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("cells/*/record.json"))]
