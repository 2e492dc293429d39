"""harness.sweep.cell: the ranks grid's cells end to end (one self-describing record each, one tidy table, segment
losses, predicted against measured memory), evaluation-only cells, a crashing cell recorded while the others complete,
kill -9 mid-cell then resume, and the cells run by Hydra's joblib and submitit launchers in other processes.

The kill and the launchers are about processes, so they run `python -m harness sweep` for real; everything else runs
the command in this process (tests/sweep/conftest.py).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness.records import read_records
from tests.conftest import REPO
from tests.sweep.conftest import CORPUS, RANKS, TINY, sweep, sweep_here, values


def test_ranks_grid_writes_one_tidy_table(ranks_sweep):
    frame = pd.read_csv(ranks_sweep / "results.csv")
    assert {"cell", "status", "error", "model", "quantizer", "adapter", "rank", "metric", "value"} <= set(frame.columns)
    cells = frame.drop_duplicates("cell")
    assert sorted(cells["rank"]) == RANKS and (cells.status == "ok").all()
    assert (cells.model == "tiny-llama").all() and (cells.quantizer == "nf4").all()
    # one record per cell, each self-describing
    records = read_records(ranks_sweep)
    assert len(records) == len(RANKS)
    for record in records:
        assert record["status"] == "ok" and record["git_commit"] and record["versions"]["torch"]
        assert record["resolved"]["device"] == "cpu" and record["seed"] == 0
        assert (ranks_sweep / "cells" / record["config_hash"] / "loss.csv").exists()
    table = values(ranks_sweep)
    # LoRA's trainable count is r x (in + out) summed over its layers: r=64 has 64 times r=1's
    assert table.loc[64, "trainable_params"] == 64 * table.loc[1, "trainable_params"]


def test_records_keep_the_segment_losses_of_every_evaluation(ranks_sweep):
    records = read_records(ranks_sweep)
    texts = {record["losses"]["text"] for record in records}
    assert len(texts) == 1  # every cell scored the same 256 tokens in the same windows: their segments pair up
    for record in records:
        losses, metrics = record["losses"], record["metrics"]
        for stage in ("full_precision", "before", "after", "merged"):
            nll, tokens = losses[stage]["nll"], losses[stage]["tokens"]
            assert sum(tokens) == 256 and len(tokens) == -(-256 // losses["segment_tokens"])
            # the segments re-add to the perplexity the record states; float64 sums of the same float32
            # token losses in another grouping differ by rounding only (~1e-15 relative)
            assert math.exp(sum(nll) / sum(tokens)) == pytest.approx(metrics[f"perplexity_{stage}"], rel=1e-12)


def test_records_predict_the_memory_they_measure(ranks_sweep):
    for record in read_records(ranks_sweep):
        metrics = record["metrics"]
        # the parts both sides count from tensors (adapter, its gradients, AdamW's moments) match to the byte;
        # the step counters are one fp32 scalar per trainable tensor on both sides
        for part in ("adapter_weights", "gradients", "optimizer", "quantized_weights"):
            assert metrics[f"predicted_memory_{part}_bytes"] == metrics[f"memory_{part}_bytes"], part
        assert metrics["predicted_peak_memory_bytes"] > 0
        assert 0 < metrics["weight_sqnr_db"] < 40  # NF4 at block 64: ~20 dB on Gaussian-like weights


def test_steps_zero_cells_evaluate_the_base_only(tmp_path):
    out = tmp_path / "dtypes"
    sweep_here("train.steps=0", "quantizer=int4,nf4", *TINY[:2], *TINY[3:], *CORPUS, out=out)
    records = {r["cell"]["quantizer"]: r for r in read_records(out)}
    assert set(records) == {"int4", "nf4"}
    for record in records.values():
        assert record["status"] == "ok", record["error"]
        assert {"perplexity_full_precision", "perplexity_before", "bits_per_param", "weight_sqnr_db"} <= set(
            record["metrics"])
        assert "perplexity_after" not in record["metrics"] and set(record["losses"]) >= {"full_precision", "before"}
        assert not (out / "cells" / record["config_hash"] / "adapter").exists()  # nothing was trained or saved


def test_a_crashing_cell_is_recorded_and_the_others_complete(tmp_path, monkeypatch):
    """In-process (the default launcher) so that one cell can be made to crash: LoRA r=2 raises mid-cell."""
    from harness.cli import sweep as sweep_cli
    from harness.sweep import cell as runner

    real = runner.execute

    def crash_at_rank_2(p, config):
        if p.adapter.rank == 2:
            raise RuntimeError("injected failure")
        return real(p, config)

    argv = ["harness", "adapter=lora,qalora", "adapter.rank=1,2", *TINY, *CORPUS, "logger=tensorboard",
            f"output_dir={tmp_path}"]
    monkeypatch.setattr(runner, "execute", crash_at_rank_2)
    monkeypatch.setattr(sys, "argv", list(argv))
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main()
    assert exit_info.value.code == 1  # a cell failed
    records = {(r["cell"]["adapter"], r["cell"]["rank"]): r for r in read_records(tmp_path)}
    assert records[("lora", 1)]["status"] == "ok"
    assert records[("lora", 2)]["status"] == "failed" and "injected failure" in records[("lora", 2)]["error"]
    for rank in (1, 2):  # QA-LoRA on nf4 cannot run: skipped, with the reason, and not a failure
        assert records[("qalora", rank)]["status"] == "skipped" and "intk" in records[("qalora", rank)]["error"]
    ok_dir = tmp_path / "cells" / records[("lora", 1)]["config_hash"]
    assert list((ok_dir / "tensorboard").glob("events.out.tfevents.*"))  # logger=tensorboard
    frame = pd.read_csv(tmp_path / "results.csv")
    assert set(frame.drop_duplicates("cell").status) == {"ok", "failed", "skipped"}

    # again, without the fault: the failed cell stays failed unless asked, the finished one is never re-run
    monkeypatch.setattr(runner, "execute", real)
    monkeypatch.setattr(sys, "argv", list(argv))
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main()
    assert exit_info.value.code == 1
    monkeypatch.setattr(sys, "argv", argv + ["sweep.rerun_failed=true"])
    sweep_cli.main()  # returns: no failed cell is left
    again = {(r["cell"]["adapter"], r["cell"]["rank"]): r for r in read_records(tmp_path)}
    assert again[("lora", 2)]["status"] == "ok"
    assert again[("lora", 1)]["time"] == records[("lora", 1)]["time"]  # kept, not re-run


# ---------------------------------------------------------------- other processes: kill -9, Hydra's launchers


def test_sigkill_mid_cell_then_resume_gives_the_same_table(ranks_sweep, tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", "+grid=ranks", *TINY, *CORPUS,
                                 f"output_dir={tmp_path}"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    cells = tmp_path / "cells"
    deadline = time.time() + 300
    try:  # wait until a cell is recorded and the next one has started, then kill it a second into its work
        while time.time() < deadline:
            done = len(list(cells.glob("*/record.json"))) if cells.exists() else 0
            if done and f"[cell {done}] adapter.rank=" in log.read_text():
                time.sleep(1.0)
                break
            assert proc.poll() is None, "the sweep ended before it could be killed:\n" + log.read_text()[-2000:]
            time.sleep(0.05)
        else:
            pytest.fail("no cell was in flight within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_records = len(list(cells.glob("*/record.json")))
    assert 1 <= killed_records < len(RANKS)
    sweep_here("+grid=ranks", *TINY, *CORPUS, out=tmp_path)
    assert len(list(cells.glob("*/record.json"))) == len(RANKS)  # exactly one record per cell
    assert len(read_records(tmp_path)) == len(RANKS)
    pd.testing.assert_frame_equal(values(tmp_path), values(ranks_sweep))


def test_joblib_launcher_runs_the_same_cells(ranks_sweep, tmp_path):
    sweep_here("+grid=ranks", *TINY, *CORPUS, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", out=tmp_path)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == \
        sorted(p.name for p in (ranks_sweep / "cells").iterdir())  # the same hashes: keyed by config only
    pd.testing.assert_frame_equal(values(tmp_path), values(ranks_sweep))


def test_submitit_local_launcher(tmp_path):
    # submitit_local runs each cell as its own process through the same code path as SLURM
    sweep_here("adapter.rank=1,2", *TINY, *CORPUS, "hydra/launcher=submitit_local", out=tmp_path)
    records = read_records(tmp_path)
    assert sorted(r["cell"]["rank"] for r in records) == [1, 2] and {r["status"] for r in records} == {"ok"}
