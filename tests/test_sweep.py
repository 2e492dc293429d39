"""Sweeps: the ranks grid end to end through Hydra's launchers, kill -9 and resume, a crashing cell, user errors
that stop before any work, atomic records and the tidy table."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.records import read_records, write_atomic
from harness.sweep.collect import tidy
from harness.sweep.plan import plan_sweep

REPO = Path(__file__).resolve().parent.parent
# the tiny model, two steps of 2 x 32 tokens and a 256-token evaluation: each cell takes seconds
TINY = ["model=tiny-llama", "model.max_positions=128", "train.steps=2", "train.seq_len=32", "train.batch_size=2",
        "train.eval_tokens=256", "train.eval_context=64"]
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


def values(out: Path) -> pd.DataFrame:
    """rank x metric of the deterministic metrics, from the collected parquet file."""
    frame = pd.read_parquet(out / "results.parquet")
    return frame[frame.metric.isin(DETERMINISTIC)].pivot_table(index="rank", columns="metric", values="value")


@pytest.fixture(scope="module")
def ranks_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    proc = sweep("+grid=ranks", *TINY, out=out)
    assert "results.parquet" in proc.stdout  # it ends by saying where its table is
    return out


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


def test_shared_work_is_done_once(ranks_sweep):
    # one evaluation of the full-precision model and one of the NF4 base serve all five cells
    assert len(list((ranks_sweep / "bases").glob("*.json"))) == 2
    table = values(ranks_sweep)
    assert table["perplexity_before"].nunique() == 1 and table["perplexity_full_precision"].nunique() == 1


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
    sweep("train.steps=0", "quantizer=int4,nf4", *TINY[:2], *TINY[3:], out=out)
    records = {r["cell"]["quantizer"]: r for r in read_records(out)}
    assert set(records) == {"int4", "nf4"}
    for record in records.values():
        assert record["status"] == "ok", record["error"]
        assert {"perplexity_full_precision", "perplexity_before", "bits_per_param", "weight_sqnr_db"} <= set(
            record["metrics"])
        assert "perplexity_after" not in record["metrics"] and set(record["losses"]) >= {"full_precision", "before"}
        assert not (out / "cells" / record["config_hash"] / "adapter").exists()  # nothing was trained or saved


def test_joblib_launcher_runs_the_same_cells(ranks_sweep, tmp_path):
    sweep("+grid=ranks", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", out=tmp_path)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == \
        sorted(p.name for p in (ranks_sweep / "cells").iterdir())  # the same hashes: keyed by config only
    pd.testing.assert_frame_equal(values(tmp_path), values(ranks_sweep))


def test_submitit_local_launcher(tmp_path):
    # submitit_local runs each cell as its own process through the same code path as SLURM
    sweep("adapter.rank=1,2", *TINY, "hydra/launcher=submitit_local", out=tmp_path)
    records = read_records(tmp_path)
    assert sorted(r["cell"]["rank"] for r in records) == [1, 2] and {r["status"] for r in records} == {"ok"}


def test_sigkill_mid_cell_then_resume_gives_the_same_table(ranks_sweep, tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", "+grid=ranks", *TINY,
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
    sweep("+grid=ranks", *TINY, out=tmp_path)
    assert len(list(cells.glob("*/record.json"))) == len(RANKS)  # exactly one record per cell
    assert len(read_records(tmp_path)) == len(RANKS)
    pd.testing.assert_frame_equal(values(tmp_path), values(ranks_sweep))


def test_a_crashing_cell_is_recorded_and_the_others_complete(tmp_path, monkeypatch):
    """In-process (the default launcher) so that one cell can be made to crash: LoRA r=2 raises mid-cell."""
    from harness.cli import sweep as sweep_cli
    from harness.sweep import cell as runner

    real = runner.execute

    def crash_at_rank_2(p, config):
        if p.adapter.rank == 2:
            raise RuntimeError("injected failure")
        return real(p, config)

    argv = ["harness", "adapter=lora,qalora", "adapter.rank=1,2", *TINY, "logger=tensorboard",
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


@pytest.fixture(scope="module")
def bad_grid(tmp_path_factory) -> Path:
    """A search-path folder with a grid whose YAML is cut off mid-list."""
    root = tmp_path_factory.mktemp("grids")
    (root / "grid").mkdir()
    (root / "grid" / "broken.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n    params:\n"
                                               "      adapter.rank: [1, 2\n")
    (root / "empty.txt").write_text("")
    return root


@pytest.mark.parametrize("args,expected", [
    (["adapter=lorra"], "Did you mean adapter=lora?"),
    (["adapter.rnk=4"], "adapter.rnk is not a field of LoraConfig. Did you mean rank?"),
    (["+grid=rankz"], "Did you mean grid=ranks?"),
    (["+grid=broken", "hydra.searchpath=[file://{root}]"], "broken.yaml"),
    (["data=text_file", "data.path={root}/empty.txt"], "empty"),
    (["adapter.rank=1,0"], "lora.rank=0 is not accepted"),
])
def test_user_errors_stop_before_any_work(bad_grid, tmp_path, args, expected):
    args = [a.format(root=bad_grid) for a in args]
    proc = sweep(*args, *TINY, out=tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_eval_user_errors_are_one_line_before_work(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness", "eval", "model=tiny-llama", "context_length=64",
                               *args, f"output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                              check=False)

    missing = run("data=text_file", "data.path=/nonexistent/corpus.txt")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "data.path='/nonexistent/corpus.txt' is not a file" in missing.stderr
    bad = run("+quantizers.bad={name: nf4, block_size: 7}")
    assert bad.returncode == 2 and "quantizers.bad: nf4.block_size=7" in bad.stderr
    assert "evaluating" not in bad.stdout  # found before the full-precision evaluation, not after


# ---------------------------------------------------------------- pieces


def test_cell_hash_covers_the_result_not_the_bookkeeping():
    cells = {tuple(c.overrides): c.hash for c in plan_sweep(["adapter.rank=4,8", *TINY]).cells}
    again = plan_sweep(["adapter.rank=4", *TINY, "output_dir=/elsewhere", "train.progress=true",
                        "sweep.name=other"]).cells
    assert again[0].hash == cells[("adapter.rank=4", *TINY)]  # where it is written does not change a result
    assert len(set(cells.values())) == 2  # the rank does
    assert plan_sweep(["adapter.rank=4", *TINY, "train.seed=1"]).cells[0].hash != again[0].hash


def test_grid_axes_and_command_line_combine_as_hydra_does():
    cells = plan_sweep(["+grid=blocksize", *TINY]).cells
    assert len(cells) == 2 * 4  # quantizer x block size
    # a key given on the command line replaces the grid's axis, as Hydra's BasicSweeper does
    assert len(plan_sweep(["+grid=blocksize", "quantizer.block_size=64", *TINY]).cells) == 2


def test_adapters_grid_matches_the_lora_budget():
    cells = plan_sweep(["+grid=adapters", *TINY]).cells
    reasons = {c.overrides[0]: c.reason for c in cells}
    lora = int(reasons["adapter=lora"].split(": ")[1].split()[0].replace(",", ""))
    loha = int(reasons["adapter=loha"].split(": ")[1].split()[0].replace(",", ""))
    assert lora == loha  # LoHa's two rank-r pairs at half LoRA's rank: exactly the same count
    assert [c.status for c in cells if c.overrides[0] == "adapter=qalora"] == ["skipped"]


def test_write_atomic_keeps_the_old_content_when_interrupted(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "record.json", '{"status": "ok"}')

    def interrupted(*args):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, '{"status": "fa')
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary file left behind


def test_tidy_has_a_row_per_cell_and_metric_and_keeps_cells_without_metrics():
    describe = {"model": "m", "quantizer": "nf4", "adapter": "lora", "targets": "q_proj", "seed": 0, "steps": 2,
                "lr": 0.001}
    records = [
        {"config_hash": "a", "status": "ok", "overrides": ["adapter.rank=4", "quantizer.block_size=64"],
         "cell": describe | {"rank": 4}, "metrics": {"perplexity_after": 10.0, "loss_last": 2.0}},
        {"config_hash": "b", "status": "skipped", "error": "no", "overrides": ["adapter=qalora"],
         "cell": describe | {"adapter": "qalora", "rank": 8}, "metrics": {}},
    ]
    frame = tidy(records)
    assert len(frame) == 3 and list(frame.metric[:2]) == ["perplexity_after", "loss_last"]
    assert frame["quantizer.block_size"].iloc[0] == 64  # a swept number is a number column
    assert "adapter.rank" not in frame.columns  # it is the `rank` column
    assert frame.loc[2, "status"] == "skipped" and pd.isna(frame.loc[2, "value"])


GRIDS = sorted(p.stem for p in (REPO / "experiments" / "grid").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS)
def test_every_shipped_grid_composes_and_every_cell_validates(grid):
    plan = plan_sweep([f"+grid={grid}"])  # the embedded model, as a user runs it
    assert plan.name == grid and str(plan.output_dir) == f"results/sweeps/{grid}"
    assert len(plan.cells) >= 4 and len({c.hash for c in plan.cells}) == len(plan.cells)
    assert all(c.status in ("planned", "skipped") for c in plan.cells)
