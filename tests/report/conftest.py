"""Helpers shared by the report tests: synthetic sweep folders written per the record schema (no model runs).

- for the figures and report.md: record(), write_sweep() and one plotted ranks sweep per test session, only read
  (a test that writes into it takes a copy);
- for the tables: write_cell(), the `sweep` folder with several seeds, a failed and a skipped cell, and table(), the
  `python -m harness table` command run in this process.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.records import config_hash, write_record
from harness.report.figures import make_figures
from harness.stats import perplexity

# ---------------------------------------------------------------- a synthetic sweep to plot

FULL_PRECISION = 21.5
# quantizer -> (weight SQNR dB, perplexity before fine-tuning): the bases of the synthetic sweep
BASES = {"nf4": (19.6, 23.9), "nf4+dq": (19.7, 23.95), "fp4": (17.4, 25.6), "int4": (16.9, 26.8)}
LAYERS_PARAMS = 57_600  # LoRA's trainable parameters per unit of rank on SmolLM2-135M's q_proj, v_proj


def record(quantizer: str, adapter: str, rank: int, seed: int, grid: str, status: str = "ok",
           error: str = "") -> dict:
    """A record as harness.sweep.cell.run_cell writes it (the keys the plot and report commands read)."""
    sqnr, before = BASES[quantizer]
    overrides = [f"quantizer={quantizer.replace('+', '_')}", f"adapter={adapter}", f"adapter.rank={rank}",
                 f"train.seed={seed}", f"+grid={grid}"]
    cell = {"model": "smollm2-135m", "quantizer": quantizer, "adapter": adapter, "rank": rank,
            "targets": "q_proj,v_proj", "seed": seed, "steps": 20, "lr": 0.001}
    key = f"{quantizer}-{adapter}-{rank}-{seed}".replace("+", "_")
    base = {"config_hash": key, "status": status, "error": error, "overrides": overrides, "cell": cell,
            "seed": seed, "seconds": 60.0, "metrics": {}}
    if status != "ok":
        return base
    factor = 2 if adapter == "loha" else 1
    trainable = LAYERS_PARAMS * rank * factor
    recovers = {"nf4": 1.0, "nf4+dq": 1.03, "fp4": 0.9, "int4": 0.8}[quantizer]
    gain = (before - FULL_PRECISION) * (0.35 + 0.12 * rank ** 0.5 * factor) * recovers + 0.04 * seed
    after = before - gain
    adapter_bytes = trainable * 4
    metrics = {
        "perplexity_full_precision": FULL_PRECISION, "perplexity_before": before, "perplexity_after": after,
        "perplexity_merged": after + 0.05 + 0.01 * seed, "trainable_params": trainable,
        "total_params": 134_515_008 + trainable, "trainable_share": trainable / 134_515_008,
        "train_tokens_per_second": (330 - 6 * rank) / factor + 7 * seed, "train_seconds": 30.0,
        "weight_sqnr_db": sqnr, "bits_per_param": 4.127,
        "memory_quantized_weights_bytes": 56e6, "memory_other_weights_bytes": 113e6,
        "memory_adapter_weights_bytes": adapter_bytes, "memory_gradients_bytes": adapter_bytes,
        "memory_optimizer_bytes": 2 * adapter_bytes, "memory_rest_bytes": 380e6 + 4e6 * seed,
        "predicted_memory_quantized_weights_bytes": 55.5e6, "predicted_memory_other_weights_bytes": 113e6,
        "predicted_memory_adapter_weights_bytes": adapter_bytes, "predicted_memory_gradients_bytes": adapter_bytes,
        "predicted_memory_optimizer_bytes": 2 * adapter_bytes, "predicted_memory_activations_bytes": 350e6,
    }
    metrics["peak_memory_bytes"] = sum(v for k, v in metrics.items() if k.startswith("memory_"))
    metrics["predicted_peak_memory_bytes"] = sum(v for k, v in metrics.items()
                                                 if k.startswith("predicted_memory_"))
    # a train.tasks accuracy (300 items) per stage, winning back part of what quantization lost
    accuracy = {"full_precision": 0.40, "before": 0.40 - (before - FULL_PRECISION) / 100}
    accuracy["after"] = accuracy["before"] + 0.01 * rank ** 0.5 * recovers + 0.005 * seed
    accuracy["merged"] = accuracy["after"] - 0.01
    for stage, acc in accuracy.items():
        metrics[f"austen_cloze/acc_{stage}"] = acc
        metrics[f"austen_cloze/sample_len_{stage}"] = 300
    return base | {"metrics": metrics}


def write_sweep(folder: Path, records: list[dict]) -> Path:
    for r in records:
        write_record(folder / "cells" / r["config_hash"] / "record.json", r)
    return folder


def ranks_sweep(folder: Path) -> Path:
    """Ranks 1, 2, 4, 8 x LoRA, LoHa x seeds 0, 1 on NF4; LoRA r=8 on three more bases; one failed cell."""
    records = [record("nf4", a, r, s, "ranks") for a in ("lora", "loha") for r in (1, 2, 4, 8) for s in (0, 1)]
    records += [record(q, "lora", 8, 0, "ranks") for q in ("nf4+dq", "fp4", "int4")]
    records.append(record("int4", "lokr", 4, 0, "ranks", status="failed",
                          error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"))
    return write_sweep(folder, records)


@pytest.fixture(scope="session")
def plotted(tmp_path_factory):
    folder = ranks_sweep(tmp_path_factory.mktemp("sweeps") / "ranks")
    lines = []
    result = make_figures(folder, echo=lines.append)
    return folder, result, lines


# ---------------------------------------------------------------- a synthetic sweep to tabulate

TEXT = "ab" * 32  # the evaluated text's key: the same for every cell, so all their segments pair up
TOKENS = np.array([128.0] * 39 + [64.0])  # 40 segments of 128 scored tokens, the last one shorter
ERROR = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def stage(rate: np.ndarray) -> dict:
    return {"nll": (rate * TOKENS).tolist(), "tokens": TOKENS.astype(int).tolist()}


def ppl(rate: np.ndarray) -> float:
    return float(perplexity(rate * TOKENS, TOKENS))


def write_cell(sweep, adapter: str, rank: int, seed: int, status: str = "ok", losses: dict | None = None,
               metrics: dict | None = None, error: str = "") -> dict:
    overrides = [f"adapter={adapter}", f"adapter.rank={rank}", f"train.seed={seed}"]
    record = {"config_hash": config_hash(overrides), "status": status, "error": error, "overrides": overrides,
              "cell": {"model": "tiny-llama", "quantizer": "nf4", "adapter": adapter, "rank": rank,
                       "targets": "q_proj,v_proj", "seed": seed, "steps": 2, "lr": 0.001},
              "seed": seed, "metrics": metrics or {}, "seconds": 1.0}
    if losses is not None:
        record["losses"] = losses
    write_record(sweep / "cells" / record["config_hash"] / "record.json", record)
    return record


@pytest.fixture
def sweep(tmp_path):
    """lora at rank 4 (seeds 0-2), rank 8 (seeds 0-1 ok, seed 2 failed) and rank 16 (seed 0 only), and a
    skipped qalora cell. Every cell shares the full-precision reference and the quantized base's
    evaluation."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 0.3, TOKENS.size)  # per segment, shared by every model
    reference = 3.4 + difficulty
    before = reference + 0.05
    for rank, seeds in ((4, (0, 1, 2)), (8, (0, 1)), (16, (0,))):
        for seed in seeds:
            after = before - 0.01 * math.log2(rank) + rng.normal(0, 0.002, TOKENS.size)
            losses = {"text": TEXT, "segment_tokens": 128, "full_precision": stage(reference),
                      "before": stage(before), "after": stage(after)}
            metrics = {"perplexity_full_precision": ppl(reference), "perplexity_before": ppl(before),
                       "perplexity_after": ppl(after), "trainable_params": 1000.0 * rank,
                       "train_tokens_per_second": 300 + 10 * seed, "peak_memory_bytes": 2.5e8,
                       "bits_per_param": 4.127}
            write_cell(tmp_path, "lora", rank, seed, losses=losses, metrics=metrics)
    write_cell(tmp_path, "lora", 8, 2, status="failed", error=ERROR + "\nsecond line of the message")
    write_cell(tmp_path, "qalora", 8, 0, status="skipped", error="qalora needs an integer quantizer, got nf4")
    return tmp_path


def table(monkeypatch, *args: str) -> None:
    from harness.cli.table import main

    monkeypatch.setattr(sys, "argv", ["harness", *map(str, args)])
    main()
