"""What every sweep figure reads: the ok cells of results.parquet, their configurations and seed intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.memory.predictor import PARTS, TENSOR_PARTS
from harness.registry import FIGURES, Entry
from harness.report.configurations import NOT_SETTINGS, ordered, show
from harness.stats import t_interval

# the measured parts add up to the peak; the predictor's activations stand where the measured rest does
MEASURED_PARTS = (*TENSOR_PARTS, "rest")

PREDICTED_PARTS = PARTS

PART_LABELS = {"quantized_weights": "quantized weights", "other_weights": "other weights",
               "adapter_weights": "adapter weights", "gradients": "gradients", "optimizer": "optimizer state",
               "rest": "rest (measured) / activations (predicted)"}

MB = 1e6

# line styles cycle with the colours, so that lines lying on each other (every configuration shares the base
# before fine-tuning) stay visible
LINESTYLES = ["-", "--", "-.", ":"]



@dataclass(frozen=True)
class Figure:
    """A sweep figure: what draws it, its title, and where it stands in `plot`'s output and the report."""

    draw: Callable  # (SweepData, out folder, formats) -> paths written; raises Skip when the data lacks it
    title: str
    position: int


def figure(name: str, position: int, title: str, caption: str) -> Callable:
    """Decorator: register a draw function as the sweep figure `name`; `caption` goes under it in report.md."""

    def register(draw: Callable) -> Callable:
        FIGURES.add(name, Figure(draw, title, position), caption)
        return draw

    return register


def in_order() -> list[Entry[Figure]]:
    """Every sweep figure, in the order `plot` draws them and the report shows them."""
    return sorted(FIGURES, key=lambda entry: entry.obj.position)


class Skip(Exception):
    """A figure the sweep has no data for; the message says why."""


@dataclass
class SweepData:
    cells: pd.DataFrame  # one row per cell (index: its hash): status, error, settings, one column per metric
    settings: list[str]  # the describing fields and every swept key (seed included)

    @property
    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells.status == "ok"]

    def varying(self, cells: pd.DataFrame | None = None) -> list[str]:
        """The settings except the seed that take more than one value among `cells` (default: the ok ones)."""
        cells = self.ok if cells is None else cells
        return [c for c in self.settings if c != "seed" and cells[c].nunique(dropna=False) > 1]


@dataclass
class PlotResult:
    written: dict[str, list[Path]] = field(default_factory=dict)  # figure name -> its files
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why it was not drawn
    spearman: tuple[float, float, int] | None = None  # weight_error_vs_perplexity: (rho, p, points)


def sweep_data(frame: pd.DataFrame) -> SweepData:
    """The tidy table (harness.sweep.collect.tidy) -> one row per cell with its settings and metrics side by side."""
    settings = [c for c in frame.columns if c not in NOT_SETTINGS]
    cells = frame.drop_duplicates("cell").set_index("cell")[["status", "error", *settings]]
    measured = frame[frame.metric.notna()]
    if len(measured):
        values = measured.pivot_table(index="cell", columns="metric", values="value", aggfunc="first")
        cells = cells.join(values)
    return SweepData(cells, settings)


def label(row: pd.Series, columns: list[str]) -> str:
    """A configuration's short name from some of its settings: 'lora nf4 r=8 block_size=64'."""
    parts = []
    for c in columns:
        value = show(row[c])
        if c in ("model", "quantizer", "adapter"):
            parts.append(value)
        elif c == "rank":
            parts.append(f"r={value}")
        elif c == "quantizer.block_size":
            parts.append(f"block {value}")
        else:
            parts.append(f"{c.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)


def _config_columns(data: SweepData, cells: pd.DataFrame, leave_out: tuple[str, ...] = ()) -> list[str]:
    """What names a configuration (or a line of them): the varying settings, or the usual three if none vary."""
    columns = [c for c in data.varying(cells) if c not in leave_out]
    if not columns:
        columns = [c for c in ("adapter", "quantizer") if c in cells.columns and c not in leave_out]
    return columns


def _configurations(data: SweepData, cells: pd.DataFrame) -> pd.DataFrame:
    """cells -> the same rows, sorted by configuration, with a `config` label column."""
    columns = _config_columns(data, cells) or ["adapter"]
    cells = ordered(cells, columns)
    return cells.assign(config=[label(row, columns) for _, row in cells.iterrows()])


def _has(cells: pd.DataFrame, metric: str) -> bool:
    return metric in cells.columns and cells[metric].notna().any()


def _ci(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with NaN for low/high when there is no interval."""
    mean, low, high, n = t_interval(np.asarray(values, dtype=float))
    return mean, (math.nan if low is None else low), (math.nan if high is None else high), n


def _legend_outside(fig, handles, labels, title: str | None = None) -> None:
    fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
