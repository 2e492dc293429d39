"""harness.weight_errors.tables: the tidy table (one row per source x tensor x quantizer x metric, the CSV beside the
parquet file) and the summary's ordering claims, re-derived from the table alone."""

import numpy as np
import pandas as pd

from harness.registry import METRICS
from tests.weight_errors.conftest import CODES, PAPER


def test_table_is_tidy(small_run):
    conf, out, _, df = small_run
    assert not df.duplicated(["source", "tensor", "quantizer", "metric"]).any()
    assert df["value"].notna().all()
    metrics = set(METRICS.names()) | {"bits_per_param"}
    per_key = (
        df[df["metric"] != "expected_mse"].groupby(["source", "tensor", "quantizer"])["metric"].apply(set)
    )
    assert all(found == metrics for found in per_key)
    # every source x tensor x quantizer is present: the small config has no shape a quantizer refuses
    n_tensors = df.groupby("source")["tensor"].nunique()
    assert len(per_key) == sum(n_tensors[s] for s in conf.sources) * len(conf.quantizers)
    # expected_mse only where the N(0, 1) theory applies: the normal source, single-level codebook scales
    theory = df[df["metric"] == "expected_mse"]
    assert set(theory["source"]) == {"normal"} and not theory["double_quant"].any()
    assert set(theory["quantizer"]) == set(CODES)
    csv = pd.read_csv(out / "weight_errors.csv")
    assert len(csv) == len(df)
    # to_csv writes each float's shortest round-trip repr; read_csv's default parser may miss the last bit
    assert np.allclose(csv["value"], df["value"], rtol=1e-12, atol=0)


def _paper_rows(df: pd.DataFrame) -> dict[str, tuple[list[str], bool, bool]]:
    """Re-derive the ordering from the table alone: pooled MSE = sum(numel * mse) / sum(numel)."""
    mse = df[(df["metric"] == "mse") & df["quantizer"].isin(CODES)]
    pooled = (mse["value"] * mse["numel"]).groupby([mse["source"], mse["quantizer"]]).sum() / mse.groupby(
        ["source", "quantizer"]
    )["numel"].sum()
    rows = {}
    for source in df["source"].unique():
        order = sorted(CODES, key=lambda q: -pooled[(source, q)])
        rows[source] = (order, order[-1] == "nf4", order == PAPER)
    return rows


def test_summary_ordering_agrees_with_table(small_run):
    _, out, summary, df = small_run
    text, ordering = summary.read_text(), (out / "ordering.md").read_text()
    rows = _paper_rows(df)
    for source, (order, nf4_lowest, matches) in rows.items():
        yes = {True: "yes", False: "no"}
        line = f"| {source} | {' > '.join(order)} | {yes[nf4_lowest]} | {yes[matches]} |"
        assert line in text and line in ordering
    verdict = "**holds**" if rows["normal"][1] else "**does not hold**"
    assert f"NF4 lowest MSE of the 4-bit codes on normal: {verdict}" in text
    matching = [s for s, (_, _, m) in rows.items() if m]
    assert f"matches on {', '.join(matching) or 'no source'};" in text
