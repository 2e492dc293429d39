"""Paper tables for the calibrated quantizers (registered with the others in harness.sweep.papers):
- methods (`+grid=methods`): round-to-nearest, NF4, GPTQ, AWQ and HQQ by bit width, before and after LoRA, beside
  the GPTQ paper's and torchao's figures, whose orderings are tested with paired intervals;
- table1 (`+paper=qa_lora_table1`): QA-LoRA's Table 1 in small: LoRA on NF4 (QLoRA), LoRA on GPTQ merged the
  QLoRA way (dequantize, add, re-quantize), QA-LoRA on GPTQ (merged into the zero points), by bit width.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.registry import PAPER_TABLES
from harness.sweep.papers import LOSSLESS_MERGE, SweepPaper, interval, paired, resolved

METHODS = ("intk", "nf4", "gptq", "awq", "hqq")  # the table's row order within a bit width
CALIBRATED = ("gptq", "awq")


def method_bits(record: dict) -> tuple[str, int]:
    q = record["resolved"]["quantizer"]
    return q["name"], int(q.get("bits", 4))  # nf4 and the other 4-bit codebooks have no bits field


def verdict(holds: bool, diff: tuple[float, float, float]) -> str:
    return f"{'holds' if holds else 'does not hold'}, {interval(diff)}{'' if resolved(diff) else ' (not resolved)'}"


@PAPER_TABLES.register("methods", "RTN, NF4, GPTQ, AWQ, HQQ by bit width, before and after LoRA (grid=methods)")
def methods_table(records: list[dict], paper: SweepPaper) -> tuple[pd.DataFrame, list[str]]:
    by = {method_bits(r): r for r in records}

    def name(method: str) -> str:
        return paper.labels.get(method, method)

    first = next(iter(by.values()))
    rows = [{"bits": math.nan, "method": "full precision", "bits/param": math.nan, "weight SQNR (dB)": math.nan,
             "layer output error": math.nan, "RTN's output error": math.nan, "quantize s": math.nan,
             "ppl before": first["metrics"].get("perplexity_full_precision", math.nan), "before vs RTN": "—",
             "ppl after LoRA": math.nan, "ppl merged": math.nan,
             **{paper.labels.get(k, k): v.get("full", math.nan) for k, v in paper.published.items()}}]
    for bits in sorted({b for _, b in by}, reverse=True):
        rtn = by.get(("intk", bits))
        for method in [m for m in METHODS if (m, bits) in by] + sorted({m for m, b in by if b == bits} - set(METHODS)):
            r = by[(method, bits)]
            m = r["metrics"]
            versus = paired(r, "before", rtn, "before") if rtn is not None and r is not rtn else (math.nan,) * 3
            rows.append({"bits": bits, "method": name(method), "bits/param": m.get("bits_per_param", math.nan),
                         "weight SQNR (dB)": m.get("weight_sqnr_db", math.nan),
                         "layer output error": m.get("layer_output_error", math.nan),
                         "RTN's output error": m.get("layer_output_error_rtn", math.nan),
                         "quantize s": m.get("quantize_seconds", math.nan),
                         "ppl before": m["perplexity_before"], "before vs RTN": interval(versus),
                         "ppl after LoRA": m.get("perplexity_after", math.nan),
                         "ppl merged": m.get("perplexity_merged", math.nan),
                         **{paper.labels.get(k, k): v.get(f"{method}{bits}", math.nan)
                            for k, v in paper.published.items()}})
    claims = []
    for method in CALIBRATED:
        gaps = {}
        for bits in sorted({b for m, b in by if m == method}, reverse=True):
            if ("intk", bits) not in by:
                continue
            diff = paired(by[(method, bits)], "before", by[("intk", bits)], "before")
            gaps[bits] = -diff[0]
            claims.append(f"{name(method)} beats round-to-nearest at {bits} bits (GPTQ paper, AWQ paper, torchao): "
                          f"{verdict(diff[0] < 0, diff)}")
        if 4 in gaps and 3 in gaps:
            claims.append(f"{name(method)}'s gain over round-to-nearest widens from 4 to 3 bits (GPTQ paper: 6.16 -> "
                          f"~1250 on OPT-125M): {'holds' if gaps[3] > gaps[4] else 'does not hold'} here, "
                          f"{gaps[4]:.3f} -> {gaps[3]:.3f}")
    for better, worse in (("gptq", "hqq"), ("hqq", "intk")):  # torchao's Llama-3-8B int4 g64 ordering
        if (better, 4) in by and (worse, 4) in by:
            diff = paired(by[(better, 4)], "before", by[(worse, 4)], "before")
            claims.append(f"{name(better)} below {name(worse)} at 4 bits (torchao: GPTQ 7.921 < HQQ 8.110 < RTN "
                          f"8.316): {verdict(diff[0] < 0, diff)}")
    recovered = [(method_bits(r), paired(r, "after", r, "before")) for r in records if "after" in r.get("losses", {})]
    if recovered:
        every = all(d[0] < 0 and resolved(d) for _, d in recovered)
        claims.append(f"LoRA lowers every base's perplexity, resolved on each: {'holds' if every else 'does not hold'} "
                      f"({', '.join(f'{name(m)} {b}-bit {d[0]:+.2f}' for (m, b), d in recovered)})")
    return pd.DataFrame(rows), claims


def accuracy_columns(metrics: dict) -> dict[str, float]:
    """<task> acc after / merged columns for every task the cells scored (train.tasks)."""
    tasks = sorted({k.split("/")[0] for k in metrics if k.endswith("/acc_after")})
    return {f"{task} acc {stage}": metrics.get(f"{task}/acc_{stage}", math.nan)
            for task in tasks for stage in ("after", "merged")}


def table1_row(record: dict) -> tuple[str, int]:
    """(QA-LoRA Table 1's method, bits) of a cell: LoRA on NF4 is QLoRA, LoRA on GPTQ is QLoRA w/ GPTQ."""
    method, bits = method_bits(record)
    adapter = record["cell"]["adapter"]
    if adapter == "qalora":
        return f"qalora_{method}", bits
    return ("qlora" if method == "nf4" else f"qlora_{method}"), bits


@PAPER_TABLES.register("table1", "QA-LoRA Table 1: QLoRA on NF4, QLoRA w/ GPTQ, QA-LoRA on GPTQ, merged, by bits")
def table1(records: list[dict], paper: SweepPaper) -> tuple[pd.DataFrame, list[str]]:
    by = {table1_row(r): r for r in records}
    rows, change = [], {}
    for (method, bits), r in sorted(by.items(), key=lambda item: (-item[0][1], item[0][0])):
        m = r["metrics"]
        change[(method, bits)] = paired(r, "merged", r, "after")
        rows.append({"bits": bits, "method": paper.labels.get(method, method), "before": m["perplexity_before"],
                     "after": m["perplexity_after"], "merged": m.get("perplexity_merged", math.nan),
                     "merged - after": interval(change[(method, bits)]),
                     "merged layers quantized": f"{100 * m.get('merged_quantized_share', math.nan):.0f}%",
                     **accuracy_columns(m),
                     "published MMLU": (paper.published.get(method) or {}).get(str(bits), math.nan)})
    claims = []
    qa = {b: d for (method, b), d in change.items() if method.startswith("qalora")}
    ql = {b: d for (method, b), d in change.items() if method.startswith("qlora_")}
    if qa:
        kept = all(abs(d[0]) <= LOSSLESS_MERGE * by[(m, b)]["metrics"]["perplexity_after"]
                   for (m, b), d in change.items() if m.startswith("qalora"))
        claims.append(f"QA-LoRA's merged model keeps its fine-tuned quality (|merged - after| within "
                      f"{100 * LOSSLESS_MERGE:.1f}% at {', '.join(f'{b}' for b in sorted(qa, reverse=True))} bits): "
                      f"{'holds' if kept else 'does not hold'}")
    if ql:
        lost = all(d[0] > 0 and resolved(d) for d in ql.values())
        claims.append(f"QLoRA w/ GPTQ's merged model does not (merged worse than after, resolved at every width: "
                      f"{', '.join(f'{b}-bit {d[0]:+.3f}' for b, d in sorted(ql.items(), reverse=True))}): "
                      f"{'holds' if lost else 'does not hold'}")
    for task in sorted({k.split("/")[0] for r in records for k in r["metrics"] if k.endswith("/acc_after")}):
        kept = {(m, b): (r["metrics"].get(f"{task}/acc_after"), r["metrics"].get(f"{task}/acc_merged"))
                for (m, b), r in by.items()}
        qa_kept = all(a == g for (m, _), (a, g) in kept.items() if m.startswith("qalora") and a is not None)
        ql_lost = all(g < a for (m, _), (a, g) in kept.items() if m.startswith("qlora_") and a is not None)
        points = ", ".join(f"{paper.labels.get(m, m)} {b}-bit {a:.3f} -> {g:.3f}"
                           for (m, b), (a, g) in sorted(kept.items()) if a is not None)
        claims.append(f"{task} accuracy (share of items): QA-LoRA's merged model answers as the fine-tuned one did, "
                      f"at every width: {'holds' if qa_kept else 'does not hold'}; QLoRA w/ GPTQ's merged model "
                      f"answers worse than after fine-tuning, at every width: {'holds' if ql_lost else 'does not hold'}"
                      f" (after -> merged: {points})")
    for bits in sorted(qa.keys() & ql.keys(), reverse=True):
        a = next(r for (m, b), r in by.items() if b == bits and m.startswith("qalora"))
        q = next(r for (m, b), r in by.items() if b == bits and m.startswith("qlora_"))
        diff = paired(a, "merged", q, "merged")
        claims.append(f"merged, QA-LoRA beats QLoRA w/ GPTQ at {bits} bits (paper: "
                      f"{(paper.published.get('qalora_gptq') or {}).get(str(bits), '?')} vs "
                      f"{(paper.published.get('qlora_gptq') or {}).get(str(bits), '?')} MMLU): "
                      f"{verdict(diff[0] < 0, diff)}")
    return pd.DataFrame(rows), claims
