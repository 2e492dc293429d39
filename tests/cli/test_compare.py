"""`python -m harness compare`: two synthetic sweeps sharing cells become one sweep folder (each config hash once, an
ok record before a failed one, a `sweep` column), with the Pareto table read off by hand, figures and report.md; a
second compare into the same folder replaces its cells; bad arguments exit 2 with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, harness_here
from tests.report.conftest import record, write_sweep

# ranks_a and ranks_b both ran nf4 r=4 (ok in both) and int4 r=8 (failed in ranks_a, ok in ranks_b)
A = [record("nf4", "lora", r, 0, "ranks") for r in (1, 2, 4)] + [
    record("int4", "lora", 8, 0, "ranks", status="failed", error="RuntimeError: out of memory")]
B = [record("nf4", "lora", 4, 0, "ranks"), record("nf4", "lora", 8, 0, "ranks"), record("fp4", "lora", 8, 0, "ranks"),
     record("int4", "lora", 8, 0, "ranks")]


def sweeps(root):
    a, b = write_sweep(root / "ranks_a", A), write_sweep(root / "ranks_b", B)
    for folder, bases in ((a, ("shared", "only_a")), (b, ("shared", "only_b"))):
        for name in bases:
            (folder / "bases").mkdir(exist_ok=True)
            (folder / "bases" / f"{name}.json").write_text(json.dumps({"from": folder.name}))
    return a, b


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare ranks_a ranks_b run where the default out folder is results/compare/ranks_a+ranks_b."""
    from harness.cli.compare import main

    root = tmp_path_factory.mktemp("compare")
    a, b = sweeps(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["harness", "ranks_a", "ranks_b"])
        main()
    return root / "results" / "compare" / "ranks_a+ranks_b", a, b


def test_union_keeps_each_hash_once_and_names_its_sweep(compared):
    out, _, _ = compared
    hashes = {r["config_hash"] for r in A + B}
    assert {p.parent.name for p in out.glob("cells/*/record.json")} == hashes
    duplicates = len(A) + len(B) - len(hashes)
    assert json.loads((out / "compare.json").read_text())["duplicates_dropped"] == duplicates == 2
    cells = pd.read_csv(out / "results.csv").drop_duplicates("cell").set_index("cell")
    assert cells.loc["nf4-lora-4-0", "sweep"] == "ranks_a"  # ok in both: the first sweep named
    assert cells.loc["int4-lora-8-0", "sweep"] == "ranks_b" and cells.loc["int4-lora-8-0", "status"] == "ok"
    assert cells.loc["nf4-lora-1-0", "sweep"] == "ranks_a" and cells.loc["fp4-lora-8-0", "sweep"] == "ranks_b"
    assert {p.stem for p in (out / "bases").glob("*.json")} == {"shared", "only_a", "only_b"}


def test_pareto_table_lists_the_frontier_by_hand(compared):
    out, _, _ = compared
    after = {r["config_hash"]: r["metrics"]["perplexity_after"] for r in B}
    # fp4 and int4 at r=8 train as many parameters as nf4 at r=8 and end worse: dominated. nf4's ranks each buy a
    # lower perplexity with more parameters: all on the frontier.
    assert after["fp4-lora-8-0"] > after["nf4-lora-8-0"] and after["int4-lora-8-0"] > after["nf4-lora-8-0"]
    table = pd.read_csv(out / "tables" / "pareto.csv")
    front = table[(table.quality_metric == "perplexity_after") & (table.cost_metric == "trainable_params")]
    assert front.configuration.tolist() == ["nf4 r=1", "nf4 r=2", "nf4 r=4", "nf4 r=8"]
    assert front.sweep.tolist() == ["ranks_a", "ranks_a", "ranks_a", "ranks_b"]


def test_figures_and_report_are_written(compared):
    out, _, _ = compared
    for stem in ("pareto_perplexity_after_vs_trainable_params", "pareto_perplexity_merged_vs_peak_memory"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "figures/pareto_perplexity_after_vs_trainable_params.png" in report and "tables/pareto.md" in report
    assert "6 cells (6 ok)" in report  # the failed duplicate is gone


def test_a_second_compare_replaces_the_cells(compared, tmp_path):
    earlier, a, _ = compared
    out = shutil.copytree(earlier, tmp_path / "out")  # an earlier compare's folder (compare.json), left as it was
    c = write_sweep(tmp_path / "ranks_c", [record("nf4", "lora", 16, 0, "ranks")])
    run = harness_here("compare", a, c, "--out", out)
    assert run.returncode == 0, run.stderr
    hashes = {r["config_hash"] for r in A} | {"nf4-lora-16-0"}
    assert {p.parent.name for p in out.glob("cells/*/record.json")} == hashes  # ranks_b's cells are gone
    assert "0 duplicate records dropped" in run.stdout


@pytest.mark.parametrize("case", ["one", "no_records", "twice", "out_inside", "out_is_a_sweep", "option", "no_out"])
def test_bad_arguments_exit_2_with_one_line(tmp_path, case):
    a, b = sweeps(tmp_path)
    other = write_sweep(tmp_path / "other", [record("nf4", "lora", 16, 0, "ranks")])  # a sweep, not compare's
    (tmp_path / "empty").mkdir()
    args = {"one": [a], "no_records": [a, tmp_path / "empty"], "twice": [a, b, a],
            "out_inside": [a, b, "--out", a / "compare"], "out_is_a_sweep": [a, b, "--out", other],
            "option": [a, b, "--bogus"], "no_out": [a, b, "--out"]}[case]
    run = harness_here("compare", *args)
    assert run.returncode == 2, run.stdout
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert [p.parent.name for p in other.glob("cells/*/record.json")] == ["nf4-lora-16-0"]  # nothing overwritten
    assert not (a / "compare").exists()


def test_cli_process_exits_2_on_one_sweep(tmp_path):
    a, _ = sweeps(tmp_path)
    run = subprocess.run([sys.executable, "-m", "harness", "compare", str(a)], capture_output=True, text=True,
                         cwd=REPO, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("error: needs two or more sweep folders") and "Traceback" not in run.stderr
