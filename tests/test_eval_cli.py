"""The eval command end to end on a tiny model, and the paper table's ordering claims."""

from __future__ import annotations

import importlib.metadata
import json
import math

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.cli import register_configs
from harness.config import EXPERIMENTS_DIR
from harness.evaluation.config import EvalConfig, PaperConfig
from harness.evaluation.paper_table import ordering_claims, wide


def compose_eval(overrides):
    register_configs()
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        return compose("eval", overrides=overrides)


def test_shipped_eval_and_paper_configs_compose_and_validate():
    cfg = compose_eval(["+paper=qlora_table2"])
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, EvalConfig)
    assert set(obj.quantizers) == {"int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq"}
    # every published label must name a configuration the paper config evaluates
    assert set(obj.paper.published) <= set(obj.quantizers)
    assert all(q.compute_dtype == "float32" for q in obj.quantizers.values())


@pytest.mark.parametrize("override,field", [("stride=4096", "stride"), ("module=gptq", "module"),
                                            ("split=dev", "split")])
def test_bad_eval_values_name_the_field(override, field):
    with pytest.raises(ValueError, match=f"eval.{field}="):
        OmegaConf.to_object(compose_eval([override]))


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


def test_ordering_claims_follow_the_numbers():
    paper = PaperConfig(name="t", published={"a": 3.0, "b": 2.0, "c": 1.0}, metric="perplexity")
    rows = [("a", 10.0), ("b", 12.0), ("c", 5.0)]  # ours: b worst, c best
    frame = pd.DataFrame([{"configuration": k, "metric": "perplexity", "value": v} for k, v in rows])
    claims = ordering_claims(wide(frame), paper)
    assert claims["paper_order"] == "a > b > c" and claims["our_order"] == "b > a > c"
    assert claims["worst_matches"] is False and claims["best_matches"] is True
    assert claims["full_order_matches"] is False
    frame.loc[frame.configuration == "c", "value"] = math.nan  # a failed configuration drops out
    assert ordering_claims(wide(frame), paper)["our_order"] == "b > a"
