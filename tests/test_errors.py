"""`python -m harness errors` end to end on a small config: files, tidy table, metric identities, claims."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from torch import nn

from harness import config as harness_config
from harness.cli import register_configs
from harness.registry import METRICS
from harness.weight_errors.analysis import analyse
from harness.weight_errors.config import SOURCES as CONFIG_SOURCES
from harness.weight_errors.config import ErrorsConfig
from harness.weight_errors.run import errors_config, run
from harness.weight_errors.sources import SOURCES, model_weights

ROOT = Path(__file__).resolve().parent.parent
CODES = ("int4", "fp4", "fp4_e3m0", "nf4")
PAPER = ["int4", "fp4", "fp4_e3m0", "nf4"]  # QLoRA Table 2, worst perplexity first


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(harness_config.EXPERIMENTS_DIR), version_base=None):
        return compose("errors", overrides=list(overrides))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors")
    # one source of each kind (synthetic, with outliers, model); the full default run takes ~1 minute
    cfg = _compose(
        f"output_dir={out}",
        "numel=16384",
        "formats=[png]",
        "sources=[normal,outliers,tiny_llama]",
        "tiny_llama_layers=1",
    )
    summary = run(cfg)
    return errors_config(cfg), out, summary, pd.read_parquet(out / "weight_errors.parquet")


def test_outputs_exist(small_run):
    conf, out, summary, _ = small_run
    assert summary == out / "summary.md"
    expected = [
        "weight_errors.parquet",
        "weight_errors.csv",
        "summary.md",
        "ordering.md",
        "sqnr_overview.png",
    ]
    for source in conf.sources:
        expected += [f"error_hist_{source}.png", f"levels_{source}.png"]
    expected += ["sqnr_per_layer_tiny_llama.png"]
    missing = [name for name in expected if not (out / name).is_file() or (out / name).stat().st_size == 0]
    assert not missing


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


def test_metric_identities(small_run):
    conf, _, _, df = small_run
    wide = df.pivot_table(index=["source", "tensor", "quantizer"], columns="metric", values="value")
    tensors = {(s, t): w for s in conf.sources for t, w in SOURCES[s].load(conf)}
    for (source, tensor, _), row in wide.iterrows():
        w = tensors[(source, tensor)].double()
        signal = w.pow(2).mean().item()
        # all are float64 reductions of the same numbers: they agree to ~1e-12 relative, so 1e-9 is loose
        assert row["sqnr_db"] == pytest.approx(10 * math.log10(signal / row["mse"]), rel=1e-9)
        assert row["rmse"] == pytest.approx(math.sqrt(row["mse"]), rel=1e-9)
        assert row["rel_frobenius"] == pytest.approx(10 ** (-row["sqnr_db"] / 20), rel=1e-9)
        assert row["max_abs_error"] ** 2 >= row["mse"]


def test_bits_per_param_is_what_the_quantizer_reports(small_run):
    conf, _, _, df = small_run
    bits = df[df["metric"] == "bits_per_param"].set_index(["source", "tensor", "quantizer"])["value"]
    for source in ("normal", "tiny_llama"):
        for tensor, w in SOURCES[source].load(conf)[:3]:
            for label, qconf in conf.quantizers.items():
                qt = qconf.build().quantize(w.float())
                assert bits[(source, tensor, label)] == qt.bits_per_param  # both exact byte counts


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


def test_quantizer_that_refuses_a_shape_is_skipped_and_reported():
    # rows of 4104 are not a multiple of intk's group of 32; nf4's blocks run across rows and do not care
    conf = errors_config(_compose("numel=16416", "synthetic_cols=4104", "sources=[normal]"))
    quantizers = {label: conf.quantizers[label].build() for label in ("nf4", "int4_asym_g32")}
    result = analyse(conf, quantizers)
    assert (
        len(result.skipped) == 1
        and "int4_asym_g32" in result.skipped[0]
        and "group_size" in result.skipped[0]
    )
    assert {r["quantizer"] for r in result.records} == {"nf4"}


def test_model_weights_yields_every_linear():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2, bias=False)), nn.Embedding(3, 4)
    )
    names = [(name, tuple(w.shape)) for name, w in model_weights(model)]
    assert names == [("0", (8, 4)), ("2.0", (2, 8))]
    assert not any(w.requires_grad for _, w in model_weights(model))


def test_sources_are_the_configs_sources():
    assert set(SOURCES) == set(CONFIG_SOURCES)


def test_synthetic_sources_have_the_documented_variance():
    conf = errors_config(_compose("numel=1048576"))
    for source in ("normal", "laplace", "student_t"):
        ((_, w),) = SOURCES[source].load(conf)
        assert w.shape == (256, 4096)
        # 2**20 draws: the sample variance's standard error is sqrt((kurtosis - 1) / n), ~0.003 for the normal
        # and Laplace; Student-t(3) has infinite kurtosis, so its sample variance is erratic: 10% for all
        assert w.double().var().item() == pytest.approx(1.0, rel=0.1), source
    ((_, w),) = SOURCES["outliers"].load(conf)
    n_outliers = (w.abs() >= conf.outlier_magnitude).sum().item()
    # the injected ones, plus N(0, 1) draws beyond 6 sigma (expected 2e-9 * 2**20 ~ 0.002)
    assert n_outliers == round(conf.outlier_fraction * w.numel())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="synthetic_cols"):
        ErrorsConfig(numel=5000)
    with pytest.raises(ValueError, match="student_t_df"):
        ErrorsConfig(student_t_df=2.0)
    with pytest.raises(ValueError, match="quantizers is empty"):
        errors_config(_compose("~quantizers"))


def test_cli_entry_point(tmp_path):
    # the real `python -m harness errors`: Hydra composes errors.yaml with the schemas registered at import
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "errors",
        f"output_dir={tmp_path}",
        "numel=4096",
        "sources=[normal]",
        "formats=[png]",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"summary: {tmp_path / 'summary.md'}" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".png") == [
        "ordering.md",
        "run.json",
        "summary.md",
        "weight_errors.csv",
        "weight_errors.parquet",
    ]  # no hydra log, no .hydra/
