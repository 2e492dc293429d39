"""harness.weight_errors.run: the errors command's work end to end on a small config writes every file."""


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
