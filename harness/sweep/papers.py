"""Paper reproductions that run through the sweep: our table beside the published one, and which claims hold.

`python -m harness sweep +paper=<name>` composes experiments/paper/<name>.yaml (a grid plus a `paper:` block);
after the cells are collected, write_paper() reads their records and writes <sweep dir>/paper.md (and .csv,
.tex). Three kinds of table, one per kind of claim:
- dtypes (QLoRA Table 2): perplexity of the quantized base by data type, no fine-tuning (train.steps=0);
- ranks (LoRA Table 6): perplexity after fine-tuning by rank and by the weight matrices adapted;
- merge (QA-LoRA): perplexity before / after / merged, QLoRA-style merge against QA-LoRA's, by bit width.
Absolute numbers do not carry over from the papers' models and benchmarks to a 135M model on Austen; what is
tested is each claim's direction, with a paired bootstrap interval (harness.stats) where a difference is claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.records import read_records
from harness.registry import PAPER_TABLES
from harness.stats import paired_bootstrap_ppl_diff

SMALL_RANK_GAP = 0.01  # "a small rank suffices": r=1 within 1% of the best rank's perplexity (our threshold)
LOSSLESS_MERGE = 1e-3  # "merges with no loss": within 0.1% (fp32 zero points fold the update up to rounding)


@dataclass
class SweepPaper:
    """The `paper:` block of a sweep paper config."""

    name: str = "?"
    kind: str = "dtypes"  # dtypes | ranks | merge: which table and which claims
    title: str = ""
    source: str = ""  # citation, and what the published figures measure
    published: dict[str, Any] = field(default_factory=dict)  # shape depends on the kind (see the YAMLs)
    labels: dict[str, str] = field(default_factory=dict)  # our label -> the paper's name

    def __post_init__(self) -> None:
        if self.kind not in PAPER_TABLES:
            raise ValueError(f"paper.kind={self.kind!r} is not accepted; use one of {PAPER_TABLES.names()}")


# ---------------------------------------------------------------- records -> paired numbers


def stage(record: dict, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(segment nll, segment tokens) of one evaluation stage of a record, or None when it was not kept."""
    losses = (record.get("losses") or {}).get(name)
    return None if losses is None else (np.asarray(losses["nll"]), np.asarray(losses["tokens"]))


def paired(a: dict, stage_a: str, b: dict, stage_b: str) -> tuple[float, float, float]:
    """ppl(a at stage_a) - ppl(b at stage_b) with its paired bootstrap 95% interval (nan when unpaired)."""
    la, lb = stage(a, stage_a), stage(b, stage_b)
    same_text = a.get("losses", {}).get("text") == b.get("losses", {}).get("text")
    if la is None or lb is None or not same_text:
        return (math.nan,) * 3
    diff, low, high = paired_bootstrap_ppl_diff(la[0], la[1], lb[0], lb[1])
    return diff, math.nan if low is None else low, math.nan if high is None else high


def interval(diff: tuple[float, float, float]) -> str:
    d, low, high = diff
    if math.isnan(d):
        return "—"
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


def resolved(diff: tuple[float, float, float]) -> bool:
    """The 95% interval excludes zero."""
    return not math.isnan(diff[1]) and (diff[1] > 0 or diff[2] < 0)


# ---------------------------------------------------------------- the three kinds


@PAPER_TABLES.register("dtypes", "QLoRA Table 2: the base's perplexity by data type")
def dtypes_table(records: list[dict], paper: SweepPaper) -> tuple[pd.DataFrame, list[str]]:
    """QLoRA Table 2: the base's perplexity by data type, ordered as the paper published them."""
    by = {r["cell"]["quantizer"]: r for r in records}
    reference = next(iter(by.values()))
    fp = reference["metrics"].get("perplexity_full_precision", math.nan)
    order = [q for q in paper.published if q in by] + [q for q in by if q not in paper.published]
    rows = [{"data type": "full precision", "published perplexity": math.nan, "our perplexity": fp,
             "increase": 0.0, "bits/param": math.nan, "weight SQNR (dB)": math.nan, "vs the next row": "—"}]
    for i, q in enumerate(order):
        m = by[q]["metrics"]
        nxt = order[i + 1] if i + 1 < len(order) else None
        rows.append({"data type": paper.labels.get(q, q), "published perplexity": paper.published.get(q, math.nan),
                     "our perplexity": m["perplexity_before"], "increase": m["perplexity_before"] - fp,
                     "bits/param": m.get("bits_per_param", math.nan),
                     "weight SQNR (dB)": m.get("weight_sqnr_db", math.nan),
                     "vs the next row": interval(paired(by[q], "before", by[nxt], "before")) if nxt else "—"})
    claims = []
    published = [q for q in paper.published if q in by]
    for worse, better in pairwise(published):
        diff = paired(by[worse], "before", by[better], "before")
        holds = diff[0] > 0
        claims.append(f"{paper.labels.get(worse, worse)} worse than {paper.labels.get(better, better)} (paper: "
                      f"{paper.published[worse]} > {paper.published[better]}): "
                      f"{'holds' if holds else 'does not hold'} here, ours {interval(diff)}"
                      f"{'' if resolved(diff) else ' (not resolved: the interval covers 0)'}")
    if published:
        best = min(published, key=lambda q: by[q]["metrics"]["perplexity_before"])
        claims.append(f"the best 4-bit type is {paper.labels.get(published[-1], published[-1])} (paper): ours is "
                      f"{paper.labels.get(best, best)}: {'holds' if best == published[-1] else 'does not hold'}")
    return pd.DataFrame(rows), claims


@PAPER_TABLES.register("ranks", "LoRA Table 6: perplexity after fine-tuning by adapted matrices and rank")
def ranks_table(records: list[dict], paper: SweepPaper) -> tuple[pd.DataFrame, list[str]]:
    """LoRA Table 6: perplexity after fine-tuning, rows the weight matrices adapted, columns the rank (mean over
    seeds); the published accuracies below each of our rows."""
    frame = pd.DataFrame([{"targets": r["cell"]["targets"], "rank": r["cell"]["rank"], "seed": r["cell"]["seed"],
                           "ppl": r["metrics"]["perplexity_after"]} for r in records])
    ours = frame.pivot_table(index="targets", columns="rank", values="ppl", aggfunc="mean")
    order = [t for t in paper.labels if t in ours.index] + [t for t in ours.index if t not in paper.labels]
    rows = []
    for targets in order:
        name = paper.labels.get(targets, targets)
        rows.append({"weights": name, "figure": "our perplexity after", **ours.loc[targets].round(3).to_dict()})
        for task, values in (paper.published.get(name) or {}).items():
            rows.append({"weights": name, "figure": f"published {task}",
                         **dict(zip(paper.published.get("ranks", []), values))})
    table = pd.DataFrame(rows)
    by = {(r["cell"]["targets"], r["cell"]["rank"]): r for r in records if r["cell"]["seed"] == records[0]["cell"]["seed"]}
    claims = []
    small = []
    for targets in order:
        best = ours.loc[targets].min()
        gap = ours.loc[targets].get(1, math.nan) / best - 1
        small.append(gap <= SMALL_RANK_GAP)
        claims.append(f"{paper.labels.get(targets, targets)}: r=1 is {100 * gap:.2f}% above the best rank "
                      f"(r={int(ours.loc[targets].idxmin())})")
    claims.insert(0, f"a small rank suffices (r=1 within {100 * SMALL_RANK_GAP:.0f}% of the best rank, every row): "
                     f"{'holds' if small and all(small) else 'does not hold'}")
    if len(order) >= 2:
        fewest, most = order[0], order[-1]
        best_rank = int(ours.loc[fewest].idxmin())
        a, b = by.get((most, 1)), by.get((fewest, best_rank))
        if a and b:
            diff = paired(a, "after", b, "after")
            claims.insert(1, f"adapting more matrices beats a larger rank ({paper.labels.get(most, most)} at r=1 vs "
                             f"{paper.labels.get(fewest, fewest)} at its best r={best_rank}): "
                             f"{'holds' if diff[0] < 0 else 'does not hold'}, difference {interval(diff)}"
                             f"{'' if resolved(diff) else ' (not resolved)'}")
    return table, claims


@PAPER_TABLES.register("merge", "QA-LoRA: before / after / merged by bit width and merge method")
def merge_table(records: list[dict], paper: SweepPaper) -> tuple[pd.DataFrame, list[str]]:
    """QA-LoRA: before / after / merged by bit width and merge method, the merge's change with its paired
    interval, and whether the merged layers are still quantized."""
    rows, loss = [], {}
    for r in sorted(records, key=lambda r: (-bits_of(r), r["cell"]["adapter"])):
        m, bits, adapter = r["metrics"], bits_of(r), r["cell"]["adapter"]
        change = paired(r, "merged", r, "after")
        loss[(adapter, bits)] = change
        rows.append({"bits": bits, "method": paper.labels.get(adapter, adapter),
                     "before": m["perplexity_before"], "after": m["perplexity_after"],
                     "merged": m.get("perplexity_merged", math.nan), "merged - after": interval(change),
                     "merged layers quantized": f"{100 * m.get('merged_quantized_share', math.nan):.0f}%",
                     "published": (paper.published.get(adapter) or {}).get(str(bits), math.nan)})
    claims = []
    qalora = [(b, d) for (a, b), d in loss.items() if a == "qalora"]
    lora = sorted([(b, d) for (a, b), d in loss.items() if a == "lora"], reverse=True)
    if qalora:
        exact = all(abs(d[0]) <= LOSSLESS_MERGE * after(records, "qalora", b) for b, d in qalora)
        claims.append(f"QA-LoRA merges with no loss (|merged - after| within {100 * LOSSLESS_MERGE:.1f}% at every "
                      f"bit width): {'holds' if exact else 'does not hold'}")
    if lora:
        loses = all(d[0] > 0 and resolved(d) for _, d in lora)
        claims.append(f"a QLoRA-style merge (dequantize, add, re-quantize) loses, resolved at every bit width: "
                      f"{'holds' if loses else 'does not hold'}")
        grows = all(lo[1][0] <= hi[1][0] for lo, hi in pairwise(lora))
        claims.append(f"the QLoRA-style loss grows as bits fall ({', '.join(f'{b}-bit {d[0]:+.3f}' for b, d in lora)}): "
                      f"{'holds' if grows else 'does not hold'}")
    return pd.DataFrame(rows), claims


def bits_of(record: dict) -> int:
    return int(record["resolved"]["quantizer"].get("bits", 4))


def after(records: list[dict], adapter: str, bits: int) -> float:
    return next(r["metrics"]["perplexity_after"] for r in records
                if r["cell"]["adapter"] == adapter and bits_of(r) == bits)


# ---------------------------------------------------------------- the file


def write_paper(sweep_dir: Path | str, cells: list[str], node: dict) -> str:
    """Write <sweep_dir>/paper.md, paper.csv, paper.tex for the sweep's own cells -> the markdown."""
    from harness.config import validated

    paper = validated(SweepPaper, node)
    sweep_dir = Path(sweep_dir)
    records = [r for r in read_records(sweep_dir) if r["config_hash"] in set(cells)]
    ok = [r for r in records if r["status"] == "ok"]
    lines = [f"# {paper.title or paper.name}", "", f"Published: {paper.source}", ""]
    if ok:
        table, claims = PAPER_TABLES.get(paper.kind)(ok, paper)
        note = "Intervals: paired bootstrap 95% over evaluation segments (the same text for both sides)."
        lines += [table.to_markdown(index=False, floatfmt=".3f"), "", note, "", "## Claims", ""]
        lines += [f"- {claim}" for claim in claims]
        table.to_csv(sweep_dir / "paper.csv", index=False)
        (sweep_dir / "paper.tex").write_text(table.to_latex(index=False, float_format="%.3f"))
    else:
        lines += ["No cell finished; nothing to compare."]
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        lines += ["", "## Cells without results", ""]
        lines += [f"- {r['config_hash']} {r['status']}: {(r.get('error') or '').splitlines()[0] if r.get('error') else ''}"
                  for r in bad]
    text = "\n".join(lines) + "\n"
    (sweep_dir / "paper.md").write_text(text)
    return text
