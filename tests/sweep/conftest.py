"""Helpers shared by the sweep tests (and the sweep command's): the tiny sweep overrides, the sweep command run in a
real process or in this one, the deterministic metrics of a finished sweep, and one finished ranks sweep per test
session, run in this process and only read by the tests (a test that writes takes its own folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, harness_here

# the tiny model, two steps of 2 x 32 tokens and a 256-token evaluation: each cell takes seconds
TINY = ["model=tiny-llama", "model.max_positions=128", "train.steps=2", "train.seq_len=32", "train.batch_size=2",
        "train.eval_tokens=256", "train.eval_context=64"]
# what the cells train on and evaluate: a small text corpus (30 KB, in this folder) rather than Jane Austen's 3.2 MB
# training split, whose tokenisation alone took ~4.5 s of every cell; no assertion here depends on the corpus
CORPUS = ["data=text_file", f"data.path={Path(__file__).resolve().parent / 'corpus.txt'}"]
RANKS = [1, 2, 4, 8, 64]
# metrics that must agree bit for bit between two sweeps of the same cells on this CPU (same seeds, same
# kernels; timings and resident-set figures legitimately differ)
DETERMINISTIC = ["perplexity_full_precision", "perplexity_before", "perplexity_after", "perplexity_merged",
                 "loss_first", "loss_last", "trainable_params"]


def sweep(*args: str, out: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", *args, f"output_dir={out}"], cwd=REPO,
                          capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def sweep_here(*args: str, out: Path, check: bool = True) -> subprocess.CompletedProcess:
    """The same command as sweep() run in this process (tests.conftest.harness_here), for the tests that are not
    about the process boundary; the quantized base this process already built is reused too (harness.sweep.bases
    keeps it in memory)."""
    proc = harness_here("sweep", *args, f"output_dir={out}")
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(autouse=True, scope="session")
def schemas_registered() -> None:
    """plan_sweep composes with the schemas in Hydra's ConfigStore, as the sweep command registers them on import."""
    from harness.cli import register_configs

    register_configs()


def values(out: Path) -> pd.DataFrame:
    """rank x metric of the deterministic metrics, from the collected parquet file."""
    frame = pd.read_parquet(out / "results.parquet")
    return frame[frame.metric.isin(DETERMINISTIC)].pivot_table(index="rank", columns="metric", values="value")


@pytest.fixture(scope="session")
def ranks_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    proc = sweep_here("+grid=ranks", *TINY, *CORPUS, out=out)
    assert "results.parquet" in proc.stdout  # it ends by saying where its table is
    return out
