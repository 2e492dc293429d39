"""`python -m harness plot`: the sweep's figures and report.md, on synthetic records written per the schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from harness.records import write_record
from harness.registry import FIGURES
from harness.report.figures import make_figures
from harness.report.figures_quality import recovery_share
from harness.report.markdown import write_report

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


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    folder = ranks_sweep(tmp_path_factory.mktemp("sweeps") / "ranks")
    lines = []
    result = make_figures(folder, echo=lines.append)
    return folder, result, lines


def test_every_figure_is_written(plotted):
    folder, result, lines = plotted
    assert set(result.written) == set(FIGURES.names()), result.skipped
    for name in FIGURES.names():
        for fmt in ("png", "pdf"):
            path = folder / "figures" / f"{name}.{fmt}"
            assert path.is_file() and path.stat().st_size > 1000, path
        assert any(line.startswith(f"wrote {name}") for line in lines)
    assert (folder / "results.parquet").is_file()  # collected afresh


def test_one_rank_skips_perplexity_vs_rank(tmp_path):
    folder = write_sweep(tmp_path / "dtypes", [record(q, "lora", 8, 0, "dtypes") for q in BASES])
    stale = folder / "figures" / "perplexity_vs_rank.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")  # a figure from an earlier state of the folder must not survive
    run = subprocess.run([sys.executable, "-m", "harness", "plot", str(folder)], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], check=False)
    assert run.returncode == 0, run.stderr
    assert re.search(r"skipped perplexity_vs_rank: rank takes one value \(r=8\)", run.stdout), run.stdout
    assert "skipped recovery: trainable_params takes one value" in run.stdout
    assert not stale.exists()
    assert (folder / "figures" / "weight_error_vs_perplexity.png").is_file()  # four quantizers: drawn
    report = (folder / "report.md").read_text()
    assert "perplexity_vs_rank" not in report and "figures/weight_error_vs_perplexity.png" in report


def test_recovery_share_by_hand():
    # before 30, after 26, full precision 20: 4 of the 10 lost perplexity points won back
    assert recovery_share(30.0, 26.0, 20.0) == pytest.approx(0.4)
    assert recovery_share(30.0, 18.0, 20.0) == pytest.approx(1.2)  # better than full precision
    assert recovery_share(30.0, 31.0, 20.0) == pytest.approx(-0.1)  # fine-tuning made it worse
    assert recovery_share(20.0, 19.0, 20.0) != recovery_share(20.0, 19.0, 20.0)  # no loss: NaN, not inf
    assert recovery_share(20.000001, 19.0, 20.0) != recovery_share(20.000001, 19.0, 20.0)
    assert recovery_share(float("nan"), 19.0, 20.0) != recovery_share(float("nan"), 19.0, 20.0)


def test_printed_spearman_matches_scipy(plotted):
    _, result, lines = plotted
    sqnr = [BASES[q][0] for q in BASES]
    increase = [(BASES[q][1] / FULL_PRECISION - 1) * 100 for q in BASES]
    expected = stats.spearmanr(sqnr, increase)
    line = next(x for x in lines if "Spearman rho" in x)
    rho, p, n = re.search(r"Spearman rho = (-?[\d.]+) \(p = ([\d.e-]+), n = (\d+)", line).groups()
    # the line prints rho with 3 decimals (rounding: at most 5e-4) and p with 3 significant digits (5e-3 relative)
    assert float(rho) == pytest.approx(expected.statistic, abs=5e-4)
    assert float(p) == pytest.approx(expected.pvalue, rel=5e-3)
    assert int(n) == len(BASES)  # one point per base: the 16 NF4 cells count once
    assert result.spearman[0] == pytest.approx(expected.statistic)


def test_report_links_existing_files_and_lists_the_failed_cell(plotted):
    folder, _, _ = plotted
    (folder / "tables").mkdir(exist_ok=True)
    (folder / "tables" / "summary.md").write_text("# summary\n")  # comparisons.md deliberately absent
    text = write_report(folder).read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert targets and all((folder / t).is_file() for t in targets), targets
    assert "tables/summary.md" in targets and "tables/comparisons.md" not in targets
    assert "python -m harness table" in text  # says how to get the missing table
    for name in FIGURES.names():
        assert f"figures/{name}.png" in targets
    assert text.startswith("# Sweep ranks")
    assert "20 cells (19 ok, 1 failed)" in text
    assert "int4-lokr-4-0" in text and "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in text
    assert "more detail" not in text  # the error's first line only
    assert "Spearman" in text


def test_report_without_figures_or_tables(tmp_path):
    folder = write_sweep(tmp_path / "bare", [record("nf4", "lora", 8, 0, "ranks")])
    text = write_report(folder).read_text()
    assert all((folder / target).is_file() for target in re.findall(r"\]\(([^)]+)\)", text))
    assert "python -m harness table" in text and "python -m harness plot" in text
    assert "![" not in text and "Spearman" not in text


def test_cli_rejects_a_folder_without_records(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", "plot", str(tmp_path)], capture_output=True,
                         text=True, cwd=Path(__file__).parents[1], check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "record.json" in run.stderr and "Traceback" not in run.stderr
