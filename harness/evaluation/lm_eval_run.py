"""The bridge to lm-eval: the harness model as an lm-eval model (packed scoring), local task folders, and
simple_evaluate over them and lm-eval's own registry tasks.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantizers.bnb_layers import guard_bnb_repack


def lm_eval_model(model: nn.Module, tokenizer, max_length: int = 1024, batch_size: int = 1):
    """Wrap an in-memory (quantized or adapted) model for lm-eval. HFLM leaves the model in eval mode.

    batch_size 1: lm-eval's own scoring, one request per forward pass (the reference path). Above 1: that many
    packed rows per forward pass (harness.evaluation.packed_scoring): the same scores, 1.4-2.6x faster on 2 CPU cores.
    """
    from lm_eval.models.huggingface import HFLM

    from harness.evaluation.packed_scoring import PackedHFLM

    guard_bnb_repack(model)  # HFLM calls model.eval(); later training must not meet repacked weights
    device = str(next(model.parameters()).device)
    wrapper = PackedHFLM if batch_size > 1 else HFLM
    return wrapper(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size,
                   device=device)


def lm_eval_rolling_nll(model: nn.Module, tokenizer, text: str, max_length: int = 1024) -> tuple[float, int]:
    """lm-eval's loglikelihood_rolling on `text` -> (total negative log-likelihood in nats, tokens scored)."""
    from lm_eval.api.instance import Instance

    was_training = model.training
    lm = lm_eval_model(model, tokenizer, max_length=max_length)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (loglik,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    model.train(was_training)
    return -loglik, len(lm.tok_encode(text))


def local_task_dir(task_yamls: list[Path], built: dict[str, Path] | None = None) -> Path:
    """Copy task YAMLs (and the Python helpers beside them) into a temporary folder, `data_files` absolute.

    Task files name their data relative to themselves (or with ~); lm-eval would resolve such paths against the
    working directory, so they are rewritten before lm-eval reads them. `!function helpers.fn` entries (as in
    lm-eval's own HellaSwag and WinoGrande YAMLs) are imported from the YAML's folder, hence the .py copies.
    `built`: task name -> the data file the harness built for it (harness.evaluation.tasks.BUILT_TASKS).
    """
    from harness.evaluation.tasks import DATA_FILES, TASK_NAME, data_path

    out = Path(tempfile.mkdtemp(prefix="harness-tasks-"))
    for path in task_yamls:
        text = path.read_text()
        task = TASK_NAME.search(text)
        data = (built or {}).get(task.group(1) if task else "")
        text = DATA_FILES.sub(lambda m, path=path, data=data: m.group(1) + str(data or data_path(path, m.group(2))),
                              text)
        (out / path.name).write_text(text)
        for helper in path.parent.glob("*.py"):
            shutil.copy(helper, out / helper.name)
    return out


@dataclass
class TaskScores:
    """What lm-eval scored. metrics: task (or group) -> metric -> value, lm-eval's metric names without its
    ",none" filter suffix (acc, acc_norm, perplexity, ...; another filter stays as "exact_match,strict-match").
    items: task -> {"doc_id": [...], <metric>: [...] one value per scored item in doc_id order (what lm-eval
    aggregates: acc 0/1, a loglikelihood for perplexity), "key": sha256 over the items' doc_ids and lm-eval's
    doc hashes}: two runs' items pair up only where their keys are equal."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)


def simple_evaluate_local(model: nn.Module, tokenizer, tasks, limit: int | None = None, num_fewshot: int = 0,
                          max_length: int = 1024, batch_size: int = 1, log_samples: bool = False) -> dict:
    """lm-eval's simple_evaluate on a TaskSet (harness.evaluation.tasks.resolve_tasks) -> its whole output (with
    per-item `samples` if asked). num_fewshot overrides the tasks' own defaults (0: zero-shot), except where a
    task's YAML fixes num_fewshot: 0 (lm-eval's rule).

    Local tasks are given to lm-eval as paths of their rewritten copies, registry tasks by name (or built with
    their task_datasets override), all through one TaskManager: lm-eval's registry one, indexed once per process,
    when there are registry tasks; else an empty one, since indexing lm-eval's ~14,700 YAMLs costs ~8.5 s.
    Tasks whose data the harness builds (austen_cloze) are built here at first use, into the default cache.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harness.evaluation.lm_eval_registry import registry_manager, registry_objects
    from harness.evaluation.tasks import built_task_data

    built = {task: data.path for task, data in built_task_data(tasks.names).items()}
    folder = local_task_dir(tasks.local, built)
    specs = [str(folder / path.name) for path in tasks.local]
    specs += [obj for spec in tasks.registry for obj in registry_objects(spec)]
    manager = registry_manager() if tasks.registry else TaskManager(include_defaults=False)
    was_training = model.training
    lm = lm_eval_model(model, tokenizer, max_length, batch_size)
    results = simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                              log_samples=log_samples, bootstrap_iters=0, verbosity="ERROR")
    model.train(was_training)
    return results


def run_lm_eval_tasks(model: nn.Module, tokenizer, tasks, limit: int | None = None, num_fewshot: int = 0,
                      max_length: int = 1024, batch_size: int = 1) -> TaskScores:
    """Zero-shot (or few-shot) lm-eval tasks of a TaskSet -> TaskScores (aggregates and per-item values)."""
    results = simple_evaluate_local(model, tokenizer, tasks, limit, num_fewshot, max_length, batch_size,
                                    log_samples=True)
    metrics = {task: {metric_name(key): value for key, value in values.items()
                      if isinstance(value, (int, float)) and not isinstance(value, bool)}
               for task, values in results["results"].items()}
    return TaskScores(metrics, {task: task_items(samples) for task, samples in results.get("samples", {}).items()})


def metric_name(key: str) -> str:
    """lm-eval's "acc,none" -> "acc"; a named filter stays ("exact_match,strict-match")."""
    return key.removesuffix(",none")


def task_items(samples: list[dict]) -> dict[str, Any]:
    """One task's logged samples -> {"doc_id": [...], <metric>: [...], "key": sha256}, in doc_id order. A task
    with several filters logs each item once per filter; the values of a filter other than "none" are named
    "<metric>,<filter>", as in the aggregates."""
    rows: dict[int, dict] = {}
    for sample in samples:
        row = rows.setdefault(sample["doc_id"], {"doc_hash": sample["doc_hash"]})
        suffix = "" if sample["filter"] == "none" else "," + sample["filter"]
        row.update({metric + suffix: sample[metric] for metric in sample["metrics"]})
    ids = sorted(rows)
    names = list(dict.fromkeys(name for row in rows.values() for name in row if name != "doc_hash"))
    items: dict[str, Any] = {"doc_id": ids} | {name: [rows[i].get(name) for i in ids] for name in names}
    items["key"] = hashlib.sha256("".join(f"{i}:{rows[i]['doc_hash']}\n" for i in ids).encode()).hexdigest()
    return items
