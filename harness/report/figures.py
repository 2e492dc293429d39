"""`python -m harness plot <sweep dir>`'s figures (seaborn), each drawn only when the sweep's grid has the data.

A configuration is a cell's settings except its seed; its seeds are replicates, shown as the mean with a 95%
Student-t interval (harness.stats.t_interval) wherever a configuration has more than one. Only cells with
status ok are plotted. Every figure is saved as PNG and PDF under <sweep dir>/figures/:

- perplexity_vs_rank: perplexity against the adapter rank, a panel per stage (before fine-tuning, after, after
  merging), a line per configuration, the full-precision model as a dashed line. Needs a configuration swept
  over more than one rank.
- memory_breakdown: the training memory part by part, measured and predicted side by side, in MB.
- train_throughput: training tokens per second per configuration.
- recovery: the share of the quantization loss that fine-tuning won back, against the trainable parameters.
- weight_error_vs_perplexity: each quantized base's weight SQNR against its perplexity increase over full
  precision, with their Spearman rank correlation. Needs at least three quantizer bases.
- task_accuracy_vs_rank: each train.tasks task's accuracy against the adapter rank, a panel per stage, with
  seed or item-level intervals (figures_tasks.py).
- pareto_<quality>_vs_<cost>: quality (perplexity, lm-eval accuracy; after fine-tuning, after merging) against
  peak memory, trainable parameters and training seconds, the Pareto frontier marked; one file per pair, all
  drawn by the one registered figure `pareto` (figures_pareto.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# imported for their registrations: each module registers the figures it draws
from harness.report import figures_cost, figures_pareto, figures_quality, figures_rank, figures_tasks  # noqa: F401
from harness.report.figures_quality import spearman_text
from harness.report.style import apply_style
from harness.report.sweep_data import PlotResult, Skip, in_order, sweep_data


def make_figures(sweep_dir: Path | str, formats: tuple[str, ...] = ("png", "pdf"),
                 echo: Callable[[str], None] = print) -> PlotResult:
    """Collect the sweep afresh (rewriting results.parquet/csv) and draw every figure its data allows into
    <sweep dir>/figures/, saying on `echo` what was written and what was skipped and why. A stale file of a
    figure that is now skipped is removed, so figures/ always matches the records."""
    from harness.sweep.collect import collect

    sweep_dir = Path(sweep_dir)
    data = sweep_data(collect(sweep_dir))
    out = sweep_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    apply_style()
    for entry in in_order():
        name, draw = entry.name, entry.obj.draw
        try:
            if data.ok.empty:
                raise Skip("no cell finished ok")
            drawn = draw(data, out, list(formats))
        except Skip as why:
            result.skipped[name] = str(why)
        else:
            if name == "weight_error_vs_perplexity":
                drawn, result.spearman = drawn
            result.written[name] = drawn
        if name in result.skipped:
            for fmt in formats:
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
            echo(f"skipped {name}: {result.skipped[name]}")
        else:
            echo(f"wrote {name}: {', '.join(str(p) for p in result.written[name])}")
    # pareto writes a file per (quality, cost) pair: those of pairs that no longer apply go too
    figures_pareto.remove_stale(out, result.written.get("pareto", []))
    if result.spearman is not None:
        echo(f"weight_error_vs_perplexity: {spearman_text(*result.spearman)}")
    return result
