"""The bridge to lm-eval: the harness model as an lm-eval model (packed scoring), local task folders, and
simple_evaluate over them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

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
    """Copy task YAMLs (and the Python helpers beside them) into a temporary include dir, `data_files` absolute.

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


def simple_evaluate_local(model: nn.Module, tokenizer, tasks: list[str], task_files: list[Path],
                          limit: int | None = None, num_fewshot: int = 0, max_length: int = 1024,
                          batch_size: int = 1, log_samples: bool = False) -> dict:
    """lm-eval's simple_evaluate on local task files -> its whole output (with per-item `samples` if asked).

    Tasks whose data the harness builds (austen_cloze) are built here at first use, into the default cache.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harness.evaluation.tasks import built_task_data

    built = {task: data.path for task, data in built_task_data(tasks).items()}
    # local task files only: indexing lm-eval's thousands of built-in task YAMLs took ~9 s per call on 2 cores
    manager = TaskManager(include_path=str(local_task_dir(task_files, built)), include_defaults=False)
    was_training = model.training
    lm = lm_eval_model(model, tokenizer, max_length, batch_size)
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                              log_samples=log_samples, bootstrap_iters=0, verbosity="ERROR")
    model.train(was_training)
    return results


def run_lm_eval_tasks(model: nn.Module, tokenizer, tasks: list[str], task_files: list[Path],
                      limit: int | None = None, num_fewshot: int = 0, max_length: int = 1024,
                      batch_size: int = 1) -> dict[str, dict]:
    """Zero-shot (or few-shot) lm-eval tasks from local task files -> {task: {metric: value}}."""
    results = simple_evaluate_local(model, tokenizer, tasks, task_files, limit, num_fewshot, max_length, batch_size)
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results["results"].items()}
