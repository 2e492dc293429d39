"""What a run measures of its model at each stage (before fine-tuning, after, merged; a sweep's full-precision
reference too): perplexity on the evaluation text, the loss on held-out text the fine-tuning did not target
(forgetting, as PEFT's method comparison reports it), and train.tasks scored by lm-eval with each item's result
kept, so two configurations can be compared on the same items. The wall time of all of it is summed apart from
training's (eval_seconds beside train_seconds).
"""

from __future__ import annotations

import contextlib
import time

import torch

from harness.training.plan import Plan, evaluate


def forgetting_split(p: Plan) -> str:
    """train.forgetting_split, or by default the corpus split neither trained on nor evaluated (test, or
    validation when the perplexity is measured on test)."""
    return p.train.forgetting_split or ("validation" if p.train.eval_split == "test" else "test")


def forgetting_ids(p: Plan, tokenizer) -> torch.Tensor | None:
    """The held-out text's first train.forgetting_tokens token ids: train.forgetting_path's text, else a split of
    the run's corpus; None when forgetting is off (forgetting_tokens=0) or nothing is trained (steps=0)."""
    if not p.train.forgetting_tokens or not p.train.steps:
        return None
    from harness.data.tokens import tokenize

    if p.train.forgetting_path:
        from pathlib import Path

        text = Path(p.train.forgetting_path).expanduser().read_text()
    else:
        from harness.data.corpus import load_corpus

        text = getattr(load_corpus(p.data), forgetting_split(p))
    return tokenize(text, tokenizer)[: p.train.forgetting_tokens]


class Evaluator:
    """The evaluations of one run; .seconds: their wall time so far."""

    def __init__(self, p: Plan, tokenizer, ids: torch.Tensor) -> None:
        self.p, self.tokenizer, self.ids = p, tokenizer, ids
        self.held = forgetting_ids(p, tokenizer)
        self.seconds = 0.0

    @contextlib.contextmanager
    def timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def perplexity(self, model):
        """The perplexity evaluation every stage uses (harness.evaluation.perplexity.PerplexityResult)."""
        with self.timed():
            return evaluate(model, self.ids, self.tokenizer, self.p)

    def extras(self, model, stage: str, forgetting: bool = True) -> dict:
        """The held-out loss (forgetting_loss_<stage>) and train.tasks' scores (<task>/<metric>_<stage>) of the
        model as it is now -> {"metrics": {...}, "items": {task: {"key", "doc_id", "<stage>": {metric: [...]}}}}
        (JSON as it stands, so a sweep can share a base's once)."""
        metrics, items = {}, {}
        with self.timed():
            if forgetting and self.held is not None:
                metrics[f"forgetting_loss_{stage}"] = evaluate(model, self.held, self.tokenizer, self.p).nll
            if self.p.tasks is not None:
                metrics, items = self._tasks(model, stage, metrics)
        return {"metrics": metrics, "items": items}

    def _tasks(self, model, stage: str, metrics: dict) -> tuple[dict, dict]:
        from harness.evaluation.lm_eval_run import run_lm_eval_tasks
        from harness.models.sources import resolve_context_length

        s = self.p.train
        # eval's default window (the smaller of 1024 and the model's positions), whatever train.eval_context is:
        # a task's items must fit whole
        window = resolve_context_length(None, self.p.model, model)
        scores = run_lm_eval_tasks(model, self.tokenizer, self.p.tasks, limit=s.task_limit,
                                   num_fewshot=s.num_fewshot, max_length=window, batch_size=s.task_batch_size)
        metrics = metrics | {f"{task}/{name}_{stage}": float(value) for task, named in scores.metrics.items()
                             for name, value in named.items()}
        items = {}
        for task, per_item in scores.items.items():
            values = {k: v for k, v in per_item.items() if k not in ("key", "doc_id")}
            items[task] = {"key": per_item["key"], "doc_id": per_item["doc_id"], stage: values}
        shown = {k: v for k, v in metrics.items() if k.endswith(f"/acc_{stage}")}
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        return metrics, items


def merge_items(*parts: dict) -> dict:
    """Per-task item results of several stages into one {task: {"key", "doc_id", stage: ..., stage: ...}}; a stage
    whose items are other items (another key: another task version or limit) is left out rather than mispaired."""
    out: dict = {}
    for part in parts:
        for task, entry in part.items():
            kept = out.setdefault(task, {"key": entry["key"], "doc_id": entry["doc_id"]})
            if kept["key"] == entry["key"]:
                kept.update({k: v for k, v in entry.items() if k not in ("key", "doc_id")})
    return out


def forgetting_metrics(metrics: dict) -> dict[str, float]:
    """forgetting = held-out loss after fine-tuning - before (nats per token; > 0: the text became less likely),
    forgetting_merged the same after merging."""
    out = {}
    before = metrics.get("forgetting_loss_before")
    for stage, name in (("after", "forgetting"), ("merged", "forgetting_merged")):
        if before is not None and f"forgetting_loss_{stage}" in metrics:
            out[name] = metrics[f"forgetting_loss_{stage}"] - before
    return out
