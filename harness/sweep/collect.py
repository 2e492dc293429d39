"""After a sweep: every cell record of <sweep dir>/cells/ into one tidy table, results.parquet and results.csv.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from harness.records import read_records, write_atomic
from harness.user_error import UserError

# override keys that the describing columns already hold (resolved: the quantizer's label, the matched rank)
DESCRIBED = {"adapter.rank": "rank", "adapter.targets": "targets", "train.seed": "seed", "train.steps": "steps",
             "train.lr": "lr"}


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per cell x metric: cell, status, error, sweep (only in a `compare` folder: the sweep a cell came
    from), the describing fields (model, quantizer, adapter, rank, targets, seed, steps, lr), every overridden
    key as its own column, then metric and value. A cell without metrics (skipped, failed) keeps one row with
    metric and value empty."""
    rows = []
    for record in records:
        swept = {}
        for line in record.get("overrides", []):
            key, _, value = line.partition("=")
            key = key.lstrip("+~")
            key = DESCRIBED.get(key, key)
            if key.startswith("hydra") or key in ("grid", "output_dir") or key in record["cell"]:
                continue  # the launcher's settings, where it is written, or already a describing column
            swept[key] = value
        base = {"cell": record["config_hash"], "status": record["status"], "error": record.get("error", ""),
                **({"sweep": record["sweep"]} if "sweep" in record else {}),  # `compare`: the cell's source
                **record["cell"], **swept}
        metrics = record.get("metrics") or {}
        rows += [base | {"metric": k, "value": float(v)} for k, v in metrics.items()] or [
            base | {"metric": None, "value": float("nan")}]
    frame = pd.DataFrame(rows)
    for column in frame.columns.difference(["cell", "status", "error", "sweep", "metric", "value"]):
        converted = pd.to_numeric(frame[column], errors="coerce")  # swept numbers arrive as override strings
        if converted.notna().sum() == frame[column].notna().sum():
            frame[column] = converted
    return frame


def collect(sweep_dir: Path | str) -> pd.DataFrame:
    """Every record of a sweep folder -> results.parquet and results.csv beside them (written atomically)."""
    sweep_dir = Path(sweep_dir)
    records = read_records(sweep_dir)
    if not records and any(sweep_dir.glob("cells/*/record.json")):
        raise UserError(f"every record under {sweep_dir}/cells/ is damaged (listed above); the sweep's command run "
                        "again runs those cells")
    if not records:
        raise UserError(f"no records under {sweep_dir}/cells/*/record.json; is {sweep_dir} a sweep's output_dir?")
    frame = tidy(records)
    write_atomic(sweep_dir / "results.csv", frame.to_csv(index=False))
    tmp = sweep_dir / f".results.parquet.{os.getpid()}.tmp"  # its own name: two sweeps may collect at once
    frame.to_parquet(tmp, index=False)
    tmp.replace(sweep_dir / "results.parquet")
    return frame


def summary(frame: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Per cell (in `order` when given, only those): status, the columns that vary, the headline metrics."""
    if order is not None:
        frame = frame[frame.cell.isin(order)]
    cells = frame.drop_duplicates("cell").set_index("cell")
    keep = ["status", "model", "quantizer", "adapter", "rank"]
    keys = keep + [c for c in cells.columns if c not in keep + ["metric", "value", "error"]
                   and cells[c].nunique(dropna=False) > 1]
    cells = cells[keys].reindex([c for c in order if c in cells.index] if order is not None else cells.index)
    wanted = ["perplexity_full_precision", "perplexity_before", "perplexity_after", "perplexity_merged",
              "trainable_params", "train_tokens_per_second"]
    wanted += sorted(m for m in frame.metric.dropna().unique()  # train.tasks' accuracies, stage by stage
                     if m.rpartition("/")[2] in ("acc_full_precision", "acc_before", "acc_after", "acc_merged"))
    values = frame[frame.metric.isin(wanted)].pivot_table(index="cell", columns="metric", values="value")
    if "trainable_params" in values.columns:  # a count: printed as an integer, not 3.277e+04
        values["trainable_params"] = values["trainable_params"].round().astype("Int64")
    return cells.join(values[[w for w in wanted if w in values.columns]])


def finish(plan) -> bool:
    """After Hydra ran the cells of `plan` (a SweepPlan): collect every record, print the summary, write the
    paper table if the sweep reproduces one -> whether every cell of the plan has a record and none failed."""
    frame = collect(plan.output_dir)
    mine = {c.hash for c in plan.cells}
    table = summary(frame, [c.hash for c in plan.cells])
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    failed = int((table.status == "failed").sum())
    missing = len(mine - set(table.index))
    print(f"wrote {plan.output_dir}/results.parquet and results.csv ({len(table)} of {len(mine)} cells recorded; "
          f"{failed} failed, {int((table.status == 'skipped').sum())} skipped)")
    if plan.paper is not None:
        from harness.sweep.papers import write_paper

        print(write_paper(plan.output_dir, [c.hash for c in plan.cells], plan.paper))
    return not failed and not missing
