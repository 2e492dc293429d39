"""`python -m harness errors`: run the weight-error analysis and write its table, summaries and figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.config import quantizer_config
from harness.records import write_run_json
from harness.report.style import apply_style
from harness.weight_errors import plots, tables
from harness.weight_errors.analysis import Analysis, analyse
from harness.weight_errors.config import ErrorsConfig
from harness.weight_errors.sources import SOURCES
from quantizers.base import Quantizer, QuantizerConfig
from quantizers.codebook import CodebookQuantizer


def errors_config(cfg: DictConfig) -> ErrorsConfig:
    """The composed node -> validated ErrorsConfig whose `quantizers` are validated QuantizerConfigs."""
    conf = OmegaConf.to_object(cfg)
    conf.quantizers = {
        label: q if isinstance(q, QuantizerConfig) else quantizer_config(q)
        for label, q in conf.quantizers.items()
    }
    if not conf.quantizers:
        raise ValueError("errors.quantizers is empty; add one, e.g. +quantizer@quantizers.nf4=nf4")
    return conf


def run(cfg: DictConfig | ErrorsConfig) -> Path:
    """Measure, write the table, summary and figures; returns the summary's path."""
    conf = cfg if isinstance(cfg, ErrorsConfig) else errors_config(cfg)
    out = Path(conf.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    quantizers = {label: q.build() for label, q in conf.quantizers.items()}

    start = time.perf_counter()
    result = analyse(conf, quantizers)
    df = tables.tidy(result.records)
    written = tables.write_table(df, out)
    print(
        f"measured {df['tensor'].nunique()} tensors x {len(quantizers)} quantizers "
        f"in {time.perf_counter() - start:.1f}s"
    )

    figures = _figures(conf, quantizers, result, df, out)
    theory = pd.DataFrame(result.theory)
    summary = out / "summary.md"
    sources = {name: SOURCES[name].describe(conf) for name in conf.sources}
    summary.write_text(tables.summary_markdown(df, theory, sources, result.skipped, figures, out))
    ordering = out / "ordering.md"
    orders = tables.orderings(df)
    ordering.write_text(
        tables.ordering_markdown(orders) + "\n" if not orders.empty else "(4-bit codes missing)\n"
    )
    written.append(write_run_json(out, conf, "errors"))
    for path in written + [ordering]:
        print(f"wrote {path}")
    print(f"wrote {len(figures)} figures to {out}/ ({', '.join(conf.formats)})")
    if result.skipped:
        print(f"skipped {len(result.skipped)} tensor/quantizer pairs (listed in the summary)")
    print(f"summary: {summary}")
    return summary


def _figures(
    conf: ErrorsConfig, quantizers: dict[str, Quantizer], result: Analysis, df: pd.DataFrame, out: Path
) -> list[Path]:
    apply_style()
    codes: dict[str, tuple[list[str], list[float], int]] = {}
    by_key: dict[tuple, str] = {}
    for label, q in quantizers.items():
        if isinstance(q, CodebookQuantizer):  # codes drawn where they are few enough to see (4-bit)
            levels = tuple(q.levels().tolist())
            key = (levels, q.config.block_size)
            if key in by_key:
                codes[by_key[key]][0].append(label)
            else:
                by_key[key] = label
                codes[label] = ([label], list(levels), q.config.block_size)
    paths = plots.sqnr_heatmap(tables.pooled(df), out, conf.formats)
    for source in conf.sources:
        errors = {
            label: np.concatenate(result.errors[(source, label)])
            for label in quantizers
            if (source, label) in result.errors
        }
        paths += plots.error_histograms(errors, source, out, conf.formats, conf.log_count)
        if codes:
            values = {b: np.concatenate(result.normalised[(source, b)]) for _, _, b in codes.values()}
            paths += plots.levels_over_weights(values, codes, source, out, conf.formats)
        if SOURCES[source].is_model:
            rows = df[(df["source"] == source) & (df["metric"] == "sqnr_db")]
            paths += plots.sqnr_per_layer(rows, source, out, conf.formats)
    return paths
