"""harness.sensitivity.run: the command's work end to end on a tiny model, every output written with ranked tables."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from tests.sensitivity.conftest import compose_sensitivity

pytestmark = pytest.mark.filterwarnings("ignore:MatMul8bitLt")


def markdown_tables(text: str) -> dict[str, pd.DataFrame]:
    """'## title' -> the Markdown table under it."""
    out = {}
    for section in text.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        lines = [ln for ln in body.splitlines() if ln.startswith("|") and not re.match(r"^\|[-:| ]+\|$", ln)]
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
        out[title] = pd.DataFrame(rows[1:], columns=rows[0])
    return out


def test_command_writes_every_output_with_ranked_tables(tmp_path):
    from harness.sensitivity.run import run

    cfg = compose_sensitivity(["model=tiny-llama", "max_tokens=256", "context_length=64", "compute_dtype=float32",
                               "granularity=layer", "top_k=[1,2]", "mixed_by=[block,layer]", f"output_dir={tmp_path}"])
    out = run(cfg)
    for name in ("sensitivity.csv", "sensitivity.md", "mixed_precision.csv", "heatmap.png", "heatmap.pdf",
                 "run.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = pd.read_csv(tmp_path / "sensitivity.csv")
    assert table.kind.value_counts().to_dict() == {"layer": 14, "projection": 7, "block": 2}
    assert (table.status == "ok").all() and (table.tokens == 256).all()
    # both sides are the same two floats subtracted (read back from CSV's round-tripping repr)
    assert (table.increase == table.perplexity - table.reference_perplexity).all()
    tables = markdown_tables((tmp_path / "sensitivity.md").read_text())
    ranked = [t for title, t in tables.items() if title.startswith("Per ")]
    assert len(ranked) == 3
    for t in ranked:
        increase = t["increase"].astype(float)
        assert increase.is_monotonic_decreasing and list(t["rank"].astype(int)) == list(range(1, len(t) + 1))
    assert "tiny-llama" in (tmp_path / "sensitivity.md").read_text().split("\n## ")[0]

    mixed = pd.read_csv(tmp_path / "mixed_precision.csv").fillna({"kind": ""})
    assert set(mixed.split) == {"validation", "test"}
    val = mixed[mixed.split == "validation"].set_index("configuration")
    assert val.loc["full precision", "increase"] == 0 and val.loc["full precision", "bits_per_param"] == 32
    low, high = val.loc["uniform nf4", "bits_per_param"], val.loc["uniform int8", "bits_per_param"]
    plans = val[val.kind != ""]
    assert set(plans.kind) == {"block", "layer"} and set(plans.k) == {1, 2}
    assert ((plans.bits_per_param > low) & (plans.bits_per_param <= high)).all()
    top_layer = table[table.kind == "layer"].sort_values("increase").group.iloc[-1]
    assert val.loc["most sensitive 1 layer at 8 bits", "groups_8bit"] == top_layer
    # the control keeps as many bits: the two blocks have the same shapes, so the same products are summed in the
    # same order (approx only in case a future report orders its layers differently: ~1e-16 relative)
    assert val.loc["least sensitive 1 block at 8 bits", "bits_per_param"] == pytest.approx(
        val.loc["most sensitive 1 block at 8 bits", "bits_per_param"], rel=1e-12)
    assert "least sensitive 2 blocks at 8 bits" not in val.index  # k = every block: that is uniform int8
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"] == "sensitivity" and record["resolved"]["compute_dtype"] == "float32"
    assert set(out) == {"sensitivity", "mixed_precision"}
