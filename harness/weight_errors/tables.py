"""The errors command's tables: the tidy long table on disk, pooled figures, the 4-bit ordering, the summary.

The long table has one row per (source, tensor, quantizer, metric); everything else is derived from it, so
the summary can be regenerated from the Parquet file alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

KEY = ["source", "tensor", "quantizer", "metric"]
COLUMNS = [
    "source",
    "tensor",
    "quantizer",
    "format",
    "block_size",
    "double_quant",
    "numel",
    "metric",
    "value",
]

# The four 4-bit codes of QLoRA's Table 2 and its perplexity ordering, worst first (Int4 34.34 > Float4 E2M1
# 31.07 > Float4 E3M0 29.48 > NFloat4 + DQ 27.41, mean over LLaMA 7B-65B; lower is better).
FOUR_BIT_CODES = ("int4", "fp4", "fp4_e3m0", "nf4")
PAPER_ORDER = ("int4", "fp4", "fp4_e3m0", "nf4")


def tidy(records: list[dict]) -> pd.DataFrame:
    """records: dicts with COLUMNS -> the long table (one row per KEY; raises on duplicates)."""
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    df["block_size"] = df["block_size"].astype("Int64")  # None for per-row scales
    dup = df.duplicated(KEY, keep=False)
    if dup.any():
        raise ValueError(f"the errors table has duplicate keys:\n{df.loc[dup, KEY].head()}")
    return df


def write_table(df: pd.DataFrame, out: Path) -> list[Path]:
    paths = [out / "weight_errors.parquet", out / "weight_errors.csv"]
    df.to_parquet(paths[0], index=False)
    df.to_csv(paths[1], index=False)
    return paths


def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """Per (source, quantizer): MSE and SQNR over all of the source's elements, and bits per parameter.

    Per tensor, sum w^2 = numel * mse * 10^(sqnr/10), so pooling needs nothing beyond the long table.
    """
    wide = df.pivot_table(index=["source", "quantizer", "tensor", "numel"], columns="metric", values="value")
    wide = wide.reset_index()
    wide["sq_err"] = wide["numel"] * wide["mse"]
    wide["signal"] = wide["sq_err"] * 10 ** (wide["sqnr_db"] / 10)
    wide["bits"] = wide["numel"] * wide["bits_per_param"]
    sums = wide.groupby(["source", "quantizer"], sort=False)[["numel", "sq_err", "signal", "bits"]].sum()
    out = pd.DataFrame(
        {
            "mse": sums["sq_err"] / sums["numel"],
            "sqnr_db": 10 * np.log10(sums["signal"] / sums["sq_err"]),
            "bits_per_param": sums["bits"] / sums["numel"],
        }
    ).reset_index()
    # back into the run's order (pivot_table sorts by name): sources and quantizers as configured
    rank = {
        col: {name: i for i, name in enumerate(dict.fromkeys(df[col]))} for col in ("source", "quantizer")
    }
    return out.sort_values(["source", "quantizer"], key=lambda c: c.map(rank[c.name]), ignore_index=True)


def code_labels(df: pd.DataFrame) -> dict[str, str]:
    """format -> the quantizer label that stands for it in the 4-bit comparison: one without double
    quantization (so every code costs the same bits), preferring the label named like the format."""
    rows = df[df["format"].isin(FOUR_BIT_CODES) & ~df["double_quant"]][
        ["format", "quantizer"]
    ].drop_duplicates()
    out = {}
    for fmt, group in rows.groupby("format"):
        labels = list(group["quantizer"])
        out[fmt] = fmt if fmt in labels else labels[0]
    return out


def orderings(df: pd.DataFrame) -> pd.DataFrame:
    """Per source: the 4-bit codes by pooled MSE, worst first; is nf4 lowest; is it the paper's order."""
    labels = code_labels(df)
    missing = [c for c in FOUR_BIT_CODES if c not in labels]
    if missing:
        return pd.DataFrame(columns=["source", "order", "mse", "nf4_lowest", "matches_paper"])
    mse = pooled(df).set_index(["source", "quantizer"])["mse"]
    rows = []
    for source in df["source"].unique():
        values = {fmt: mse[(source, labels[fmt])] for fmt in FOUR_BIT_CODES}
        order = tuple(sorted(FOUR_BIT_CODES, key=lambda f: -values[f]))
        rows.append(
            {
                "source": source,
                "order": order,
                "mse": values,
                "nf4_lowest": order[-1] == "nf4",
                "matches_paper": order == PAPER_ORDER,
            }
        )
    return pd.DataFrame(rows)


def ordering_markdown(orders: pd.DataFrame) -> str:
    """The small README table: one row per source."""
    lines = [
        "| source | 4-bit codes by MSE, worst > best | NF4 lowest | paper's order |",
        "|---|---|---|---|",
    ]
    for r in orders.itertuples():
        lines.append(
            f"| {r.source} | {' > '.join(r.order)} | {_yes(r.nf4_lowest)} | {_yes(r.matches_paper)} |"
        )
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def summary_markdown(
    df: pd.DataFrame,
    theory: pd.DataFrame,
    descriptions: dict[str, str],
    skipped: list[str],
    figures: list[Path],
    out: Path,
) -> str:
    """descriptions: source name -> one line; figures: paths under `out` (PNGs are linked)."""
    orders = orderings(df)
    pool = pooled(df)
    quantizers = list(dict.fromkeys(df["quantizer"]))
    sources = list(dict.fromkeys(df["source"]))
    parts = [
        "# Weight quantization error",
        "",
        (
            "Generated by `python -m harness errors`. Full table: `weight_errors.parquet` / `.csv` "
            "(one row per source x tensor x quantizer x metric). Pooled figures below are over all of a "
            "source's elements."
        ),
        "",
    ]
    parts += ["Sources:", ""] + [f"- `{name}`: {text}" for name, text in descriptions.items()] + [""]

    parts += ["## Claims, tested", ""]
    if orders.empty:
        parts += [
            (
                f"Not tested: the config lacks some of the 4-bit codes {list(FOUR_BIT_CODES)} "
                "(without double quantization)."
            ),
            "",
        ]
    else:
        parts += _claims(orders)
        parts += [
            "",
            ordering_markdown(orders),
            "",
            (
                "QLoRA's Table 2 (mean perplexity, lower is better): Int4 34.34 > Float4 E2M1 31.07 > "
                "Float4 E3M0 29.48 > NFloat4 + DQ 27.41. Its ordering is of model quality after quantizing "
                "real LLaMA weights, not of weight MSE on these sources, so a mismatch here does not "
                "contradict it. The codes are compared without double quantization, so all cost the same "
                "bits per parameter."
            ),
            "",
        ]

    parts += [
        "## Pooled SQNR (dB, higher is better)",
        "",
        _pivot(pool, "sqnr_db", quantizers, sources, "{:.2f}"),
        "",
    ]
    parts += ["## Pooled MSE", "", _pivot(pool, "mse", quantizers, sources, "{:.3g}"), ""]

    if not theory.empty:
        parts += [
            "## Expected MSE on N(0, 1) blocks: integral vs measured (`normal` source)",
            "",
            "| quantizer | block | expected (integral) | measured | measured - expected, in std. errors |",
            "|---|---|---|---|---|",
        ]
        for r in theory.itertuples():
            z = (r.empirical_mse - r.expected_mse) / r.stderr
            cells = [
                r.quantizer,
                r.block_size,
                f"{r.expected_mse:.5g}",
                f"{r.empirical_mse:.5g}",
                f"{z:+.2f}",
            ]
            parts.append("| " + " | ".join(map(str, cells)) + " |")
        parts.append("")

    if skipped:
        parts += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    parts += ["## Figures", ""] + [
        f"- [{p.name}]({p.relative_to(out)})" for p in figures if p.suffix == ".png"
    ]
    return "\n".join(parts) + "\n"


def _claims(orders: pd.DataFrame) -> list[str]:
    lines = []
    normal = orders[orders["source"] == "normal"]
    if normal.empty:
        lines.append("- NF4 lowest on normal: not tested (`normal` is not among the sources).")
    else:
        r = normal.iloc[0]
        best_other = min((f for f in FOUR_BIT_CODES if f != "nf4"), key=lambda f: r.mse[f])
        verdict = "**holds**" if r.nf4_lowest else "**does not hold**"
        lines.append(
            f"- NF4 lowest MSE of the 4-bit codes on normal: {verdict} (nf4 {r.mse['nf4']:.4g}, "
            f"best other {best_other} {r.mse[best_other]:.4g})."
        )
    match = list(orders.loc[orders["matches_paper"], "source"])
    differ = list(orders.loc[~orders["matches_paper"], "source"])
    lines.append(
        f"- Paper's ordering {' > '.join(PAPER_ORDER)} (worst > best): matches on "
        f"{', '.join(match) or 'no source'}; differs on {', '.join(differ) or 'no source'}."
    )
    return lines


def _pivot(pool: pd.DataFrame, metric: str, quantizers: list[str], sources: list[str], fmt: str) -> str:
    table = pool.pivot(index="quantizer", columns="source", values=metric).reindex(
        index=quantizers, columns=sources
    )
    bits = pool.groupby("quantizer")["bits_per_param"].mean().reindex(quantizers)
    lines = [
        "| quantizer | bits/param (mean) | " + " | ".join(sources) + " |",
        "|---" * (len(sources) + 2) + "|",
    ]
    for q in quantizers:
        cells = ["-" if math.isnan(v) else fmt.format(v) for v in table.loc[q]]
        lines.append(f"| {q} | {bits[q]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
