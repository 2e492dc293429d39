"""A sweep's cells grouped into configurations (every setting but the seed), and how their settings print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# the evaluations of a cell after the full-precision reference, with their titles in figures
STAGES = {"before": "before fine-tuning", "after": "after fine-tuning", "merged": "after merging"}

# the tidy table's columns that are not settings of a cell (sweep: which folder `compare` took a cell from)
NOT_SETTINGS = ("cell", "status", "error", "metric", "value", "sweep")
REPLICATE = "seed"  # the setting whose values are replicates of one configuration

# override keys that are not settings of the model: where it runs and writes, and the replicate axis
NOT_SWEPT = ("hydra", "grid", "output_dir", "train.seed")


@dataclass
class Configurations:
    cells: pd.DataFrame  # per cell (index: its hash): config (an id), seed, status, error, its settings
    labels: list[str]  # the settings that vary across configurations: the tables' row labels
    fixed: dict  # the settings every cell shares


def show(value) -> str:
    """A setting's value as text: 8.0 -> '8', NaN -> '—'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def configurations(frame: pd.DataFrame) -> Configurations:
    """The tidy table (harness.sweep.collect.tidy) -> its cells grouped into configurations (all settings but the
    seed)."""
    cells = frame.drop_duplicates("cell").set_index("cell")
    settings = [c for c in cells.columns if c not in NOT_SETTINGS and c != REPLICATE]
    values = cells[settings].astype(object).where(cells[settings].notna(), None)
    cells = cells.assign(config=[tuple(row) for row in values.itertuples(index=False)])
    varying = [c for c in settings if cells[c].nunique(dropna=False) > 1]
    labels = varying or [c for c in ("quantizer", "adapter", "rank") if c in settings]
    fixed = {c: show(values[c].iloc[0]) for c in settings if c not in varying}
    return Configurations(cells, labels, fixed)


def ordered(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Sort by the given settings: numbers as numbers, anything else as text."""
    if not columns:
        return table
    return table.sort_values(columns, na_position="last", kind="stable",
                             key=lambda s: s if pd.api.types.is_numeric_dtype(s) else s.astype(str))


def label_of(conf: Configurations, cell: str) -> str:
    return ", ".join(f"{c}={show(conf.cells.at[cell, c])}" for c in conf.labels) or "all cells"


def paragraph(text: str) -> str:
    return " ".join(text.split())


def pct(confidence: float) -> str:
    return f"{100 * confidence:g}%"
