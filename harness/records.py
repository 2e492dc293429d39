"""What makes a result self-describing: the resolved config, the code's git commit, package versions, the device.

Every command writes this beside its tables as `run.json`, so a table found later says how it was made.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

PACKAGES = ("torch", "bitsandbytes", "transformers", "peft", "lm_eval", "hydra-core", "pandas", "scipy")
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
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor(),
            "torch_threads": torch.get_num_threads()}
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
