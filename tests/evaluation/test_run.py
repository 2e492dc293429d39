"""harness.evaluation.run: the eval command's work end to end on a tiny model (every configuration recorded, a broken
one as failed), and context_length checked before work."""

from __future__ import annotations

import importlib.metadata
import json

import pandas as pd
import pytest

from harness.evaluation.paper_table import wide
from harness.user_error import UserError
from tests.evaluation.conftest import compose_eval


def test_eval_command_on_tiny_model_records_every_configuration(tmp_path):
    from harness.evaluation.run import run

    cfg = compose_eval([
        "model=tiny-llama", "model.max_positions=128", "max_tokens=300", "context_length=64",
        "+paper=qlora_table2", f"output_dir={tmp_path}",
        # a configuration that cannot work (group size larger than the tiny model's 64 input features)
        "+quantizer@quantizers.broken=int4_asym_g32", "quantizers.broken.group_size=4096",
    ])
    frame = run(cfg)
    table = wide(frame[frame.status == "ok"])
    assert list(table.index) == ["full precision", "int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq"]
    assert (table["tokens"] == 300).all()
    # each quantized model is smaller than the full-precision one (on 64x64 layers DQ's constant tables cost
    # more than they save, so nf4 vs nf4_dq is not compared here; the quantizer tests cover 4.127 bits)
    assert (table.loc["int4":, "model_bytes"] < table.loc["full precision", "model_bytes"]).all()
    broken = frame[frame.configuration == "broken"]
    assert (broken.status == "failed").all() and broken.error.str.contains("group_size").all()
    paper_md = (tmp_path / "qlora_table2.md").read_text()
    assert "34.340" in paper_md and "NFloat4 + DQ" in paper_md  # published column beside ours
    saved = pd.read_parquet(tmp_path / "eval.parquet")
    assert len(saved) == len(frame)
    increase = table["perplexity_increase"]
    assert increase["full precision"] == 0
    # both sides subtract the same two floats; approx (default rel 1e-6) only guards against reordering
    assert increase["int4"] == pytest.approx(table.loc["int4", "perplexity"] - table.loc["full precision", "perplexity"])
    record = json.loads((tmp_path / "run.json").read_text())  # the table says how it was made
    assert record["config"]["model"]["name"] == "tiny-llama" and record["command"] == "eval"
    assert record["versions"]["torch"] == importlib.metadata.version("torch") and record["git_commit"]


def test_context_length_above_the_model_limit_stops_before_work(tmp_path, monkeypatch):
    from harness.evaluation import perplexity as evaluate
    from harness.evaluation.run import check, run

    def started(*args, **kwargs):
        raise AssertionError("evaluation started")

    monkeypatch.setattr(evaluate, "perplexity", started)
    cfg = compose_eval(["model=tiny-opt", "context_length=1024", f"output_dir={tmp_path}"])  # > 256 positions
    message = r"eval\.context_length=1024 is above the maximum positions of model 'tiny-opt' \(256\); .* at most 256"
    with pytest.raises(UserError, match=message):  # the CLI's check, before the model is loaded
        check(cfg)
    with pytest.raises(UserError, match=message):  # run() itself, right after loading
        run(cfg)
    assert not list(tmp_path.iterdir())  # nothing evaluated, nothing written
    check(compose_eval(["model=tiny-opt", "context_length=256"]))  # the limit itself is accepted


def test_without_a_context_length_eval_uses_the_smaller_of_1024_and_the_models_positions(tmp_path):
    from harness.evaluation.run import check, run
    from harness.models.sources import DEFAULT_CONTEXT

    cfg = compose_eval(["model=tiny-opt", "max_tokens=300", f"output_dir={tmp_path}"])  # 256 positions
    check(cfg)
    table = run(cfg)
    assert table.query("metric == 'perplexity'").value.notna().all()
    assert json.loads((tmp_path / "run.json").read_text())["config"]["context_length"] == min(DEFAULT_CONTEXT, 256)


def test_eval_calibrates_gptq_and_awq_on_the_train_split_and_never_on_the_evaluated_one(tmp_path):
    from harness.evaluation.run import run

    small = ["calibration.samples=4", "calibration.seq_len=32"]
    cfg = compose_eval([
        "model=tiny-llama", "model.max_positions=128", "max_tokens=300", "context_length=64", f"output_dir={tmp_path}",
        f"model.cache_dir={tmp_path / 'cache'}",
        "+quantizer@quantizers.gptq=gptq4_g64", *[f"quantizers.gptq.{o}" for o in small],
        "+quantizer@quantizers.awq=awq4_g64", *[f"quantizers.awq.{o}" for o in small],
        # calibrated on the split the eval measures (test): refused, and the other configurations still run
        "+quantizer@quantizers.leaky=gptq4_g64", *[f"quantizers.leaky.{o}" for o in small],
        "quantizers.leaky.calibration.split=test",
    ])
    from harness.evaluation.run import check

    with pytest.raises(UserError, match=r"quantizers\.leaky.*calibration\.split='test' is the split this run "
                                        r"evaluates \(split='test'\); calibrate on another split"):
        check(cfg)  # what the command runs first, before any model is loaded
    frame = run(cfg)  # run() alone records it as a failed configuration, and the others still run
    table = wide(frame[frame.status == "ok"])
    assert list(table.index) == ["full precision", "gptq", "awq"]
    for name in ("gptq", "awq"):
        row = table.loc[name]
        assert row["quantize_seconds"] > 0 and row["quantize_peak_memory_bytes"] > 0
        assert row["layer_output_error"] < row["layer_output_error_rtn"]
    leaky = frame[frame.configuration == "leaky"]
    assert (leaky.status == "failed").all()
    assert leaky.error.str.contains("quantizer.calibration.split='test' is the split this run evaluates").all()
    assert len(list((tmp_path / "cache" / "calibrated").glob("*.pt"))) == 2
