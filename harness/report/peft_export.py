"""A sweep's cells as PEFT method-comparison result files: one JSON per cell with PEFT's run_info / train_info /
meta_info layout and field names (method_comparison/MetaMathQA/utils.py, log_results), so PEFT's processing and
app read our runs beside theirs. What PEFT has no field for stays in a `harness` section: nothing is dropped.

Ours measure the CPU too: accelerator_* fields then hold the resident-set figures of the record
(memory_reserved_*_bytes; see harness.training.accounting.step_memory), and system_info.accelerator says "cpu".
"""

from __future__ import annotations

import json
from pathlib import Path

# PEFT's train status for ours: a skipped cell (an incompatible pair) never ran, so it has no PEFT file
STATUS = {"ok": "success", "failed": "failed"}


def _get(metrics: dict, name: str):
    value = metrics.get(name)
    return None if value is None else (int(value) if float(value).is_integer() else value)


def final_metrics(record: dict) -> dict:
    """PEFT's last `metrics` entry (the test evaluation after training), our names mapped to theirs."""
    m, cell = record.get("metrics") or {}, record["cell"]
    train = record["config"]["train"]
    entry = {"step": cell.get("steps"), "train loss": m.get("loss_last"),
             "train samples": (train["batch_size"] * train["grad_accum"] * train["steps"]),
             "train total tokens": _get(m, "train_tokens"), "tokens / sec": m.get("train_tokens_per_second_median"),
             "eval time": m.get("eval_seconds"), "forgetting": m.get("forgetting"),
             "test perplexity": m.get("perplexity_after"), "test perplexity merged": m.get("perplexity_merged")}
    accuracies = sorted(k for k in m if k.endswith("/acc_after"))
    if accuracies:  # PEFT reports one test accuracy: the first task's, each task's under its own name too
        entry["test accuracy"] = m[accuracies[0]]
        entry |= {f"test accuracy {k.split('/')[0]}": m[k] for k in accuracies}
    return {k: v for k, v in entry.items() if v is not None}


def step_metrics(cell_dir: Path) -> list[dict]:
    """One entry per optimizer step from loss.csv (train loss, learning rate, tokens / sec, memory)."""
    import csv

    path = cell_dir / "loss.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [{"step": int(row["step"]), "train loss": float(row["loss"]), "learning rate": float(row["lr"]),
                 "tokens / sec": float(row["tokens_per_second"]),
                 **({"memory": int(float(row["memory_bytes"]))} if row.get("memory_bytes") else {})}
                for row in csv.DictReader(f)]


def peft_config(cell_dir: Path, record: dict) -> dict | None:
    """The adapter_config.json PEFT wrote beside the adapter's weights; else our adapter settings."""
    path = cell_dir / "adapter" / "adapter_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    return (record.get("resolved") or {}).get("adapter")


def experiment_name(record: dict) -> str:
    """PEFT's <method>/<experiment>, unique per cell (its config hash last)."""
    cell = record["cell"]
    return f"{cell['adapter']}/{cell['model']}-{cell['quantizer']}-r{cell['rank']}-{record['config_hash']}"


def peft_record(record: dict, cell_dir: Path) -> dict:
    m = record.get("metrics") or {}
    device = record.get("device") or {}
    versions = record.get("versions") or {}
    train_config = {k: record["config"].get(k) for k in ("model", "data", "quantizer", "train", "module",
                                                         "device", "compute_dtype", "merge")}
    return {
        "run_info": {"created_at": record.get("time"), "total_time": record.get("seconds"),
                     "experiment_name": experiment_name(record), "peft_branch": None,
                     "train_config": train_config, "peft_config": peft_config(cell_dir, record),
                     "error_msg": record.get("error", "")},
        "train_info": {
            "accelerator_memory_reserved_avg": _get(m, "memory_reserved_avg_bytes"),
            "accelerator_memory_max": _get(m, "peak_memory_reserved_bytes"),
            "accelerator_memory_reserved_99th": _get(m, "memory_reserved_99th_bytes"),
            "train_time": m.get("train_seconds"), "file_size": _get(m, "adapter_file_bytes"),
            "num_trainable_params": _get(m, "trainable_params"), "num_total_params": _get(m, "total_params"),
            "status": STATUS[record["status"]],
            "metrics": step_metrics(cell_dir) + ([final_metrics(record)] if m else []),
        },
        "meta_info": {
            "model_info": {"sha": None, "created_at": None, "name": record["cell"]["model"]},
            "dataset_info": {"train": {"sha": None, "created_at": None,
                                       "name": (record["config"].get("data") or {}).get("name")}},
            "package_info": {f"{name}-version": version for name, version in versions.items()}
                            | {f"{name}-commit-hash": None for name in versions},
            "system_info": {k: device.get(k) for k in ("system", "release", "version", "machine", "processor",
                                                       "accelerator")},
            "pytorch_info": device.get("platform"),
        },
        "harness": {"config_hash": record["config_hash"], "git_commit": record.get("git_commit"),
                    "cell": record["cell"], "metrics": m},
    }


def export_peft(sweep_dir: Path | str) -> tuple[list[Path], int]:
    """<sweep dir>/peft/<method>--<experiment>.json for every ok or failed cell -> (paths written, cells left
    out because they were skipped)."""
    from harness.records import read_records, write_atomic

    sweep_dir = Path(sweep_dir)
    paths, skipped = [], 0
    for record in read_records(sweep_dir):
        if record["status"] not in STATUS:
            skipped += 1
            continue
        cell_dir = sweep_dir / "cells" / record["config_hash"]
        name = experiment_name(record).replace("/", "--")
        text = json.dumps(peft_record(record, cell_dir), indent=2, default=str, allow_nan=True)
        paths.append(write_atomic(sweep_dir / "peft" / f"{name}.json", text + "\n"))
    return paths, skipped
