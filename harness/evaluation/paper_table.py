"""Our results beside a paper's published figures, as Markdown and LaTeX, with the paper's claim tested.

Input is the tidy frame the eval command produces (one row per configuration x metric). Absolute values are not
comparable across models and corpora; what carries over is the ordering, so the table states whether the
paper's ordering holds on our run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

BASELINE = "full precision"


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows -> one row per configuration, one column per metric (configuration order kept)."""
    order = list(dict.fromkeys(frame["configuration"]))
    table = frame.pivot_table(index="configuration", columns="metric", values="value", aggfunc="first")
    return table.reindex(order)


def ordering_claims(table: pd.DataFrame, paper) -> dict[str, bool | str]:
    """Test the paper's ordering on our `paper.metric`: which configuration is worst and best among the ones it
    published, and whether the whole published order is reproduced."""
    published = {k: v for k, v in paper.published.items() if k in table.index and pd.notna(table.loc[k, paper.metric])}
    if len(published) < 2:
        return {"ordering": "not enough configurations to compare"}
    sign = 1 if paper.lower_is_better else -1
    paper_order = sorted(published, key=lambda k: -sign * published[k])  # worst first
    ours = table.loc[list(published), paper.metric]
    our_order = sorted(published, key=lambda k: -sign * ours[k])
    return {
        "paper_order": " > ".join(paper_order),
        "our_order": " > ".join(our_order),
        "worst_matches": our_order[0] == paper_order[0],
        "best_matches": our_order[-1] == paper_order[-1],
        "full_order_matches": our_order == paper_order,
    }


def render(frame: pd.DataFrame, paper) -> tuple[str, str]:
    """-> (markdown, latex) of the paper table."""
    table = wide(frame)
    metric = paper.metric
    base = table.loc[BASELINE, metric] if BASELINE in table.index else float("nan")
    rows = []
    for label in table.index:
        ours = table.loc[label, metric]
        rows.append({
            "data type": paper.labels.get(label, label),
            f"paper {metric}": paper.published.get(label, float("nan")),
            f"our {metric}": ours,
            "increase over full precision": ours - base,
            "bits/param": table.loc[label].get("bits_per_param", float("nan")),
            "model MB": table.loc[label].get("model_bytes", float("nan")) / 1e6,
            "eval tokens/s": table.loc[label].get("tokens_per_second", float("nan")),
        })
    out = pd.DataFrame(rows)
    claims = ordering_claims(table, paper)
    model, corpus = frame["model"].iloc[0], frame["corpus"].iloc[0]
    notes = [f"Ours: {model} on {corpus} ({frame['split'].iloc[0]} split). Paper: {paper.source}.",
             "Absolute values are not comparable across models and corpora; the claim is the ordering."]
    notes += [f"- {k.replace('_', ' ')}: {v}" for k, v in claims.items()]
    markdown = f"## {paper.title}\n\n" + out.to_markdown(index=False, floatfmt=".3f") + "\n\n" + "\n".join(notes) + "\n"
    latex = out.to_latex(index=False, float_format="%.3f", na_rep="--", caption=paper.title, label=f"tab:{paper.name}")
    return markdown, latex


def write_eval_outputs(frame: pd.DataFrame, cfg: DictConfig) -> list[Path]:
    """The tidy table (Parquet + CSV), a Markdown summary, and the paper table when cfg.paper is set."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "eval.parquet", out / "eval.csv", out / "summary.md"]
    frame.to_parquet(paths[0], index=False)
    frame.to_csv(paths[1], index=False)
    summary = wide(frame).to_markdown(floatfmt=".4g")
    paths[2].write_text(f"# eval: {frame['model'].iloc[0]} on {frame['corpus'].iloc[0]}\n\n{summary}\n")
    if cfg.get("paper") is not None:
        paper = OmegaConf.to_object(cfg.paper) if isinstance(cfg.paper, DictConfig) else cfg.paper
        markdown, latex = render(frame, paper)
        paths += [out / f"{paper.name}.md", out / f"{paper.name}.tex"]
        paths[-2].write_text(markdown)
        paths[-1].write_text(latex)
    return paths
