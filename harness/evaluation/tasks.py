"""lm-eval tasks by name: the local task files (experiments/lm_eval_tasks/*.yaml, each naming its JSONL data relative
to itself) and lm-eval's own registry (arc_easy, hellaswag, piqa, winogrande, mmlu, lambada_openai, ...).

A user adds a task of their own by dropping a task YAML and its data in experiments/lm_eval_tasks/; `eval
tasks=[name]` then runs it on full-precision, quantized and adapted models alike. A few local tasks are not shipped
as data but built from the corpus at first use (BUILT_TASKS), so their YAML names a file that is not there. A name
that is not local is looked up in lm-eval's registry (a local task of the same name wins, as with lm-eval's
include_path). resolve_tasks() checks everything before any model is loaded.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import EXPERIMENTS_DIR
from harness.registry import BUILT_TASKS  # task -> builder(cache_dir) of its data -> .path, .record()

TASKS_DIR = EXPERIMENTS_DIR / "lm_eval_tasks"  # not a Hydra group: lm-eval reads these files itself
# a task YAML's `data_files: {split: path}` (kept on one line, as the shipped files write it): group 2 is the path
DATA_FILES = re.compile(r"(data_files:\s*\{?\s*\w+:\s*)([^\s,}]+)")
# a task YAML's `task: <name>` line: group 1 is the name
TASK_NAME = re.compile(r"^task:\s*(\S+)", re.MULTILINE)


def available_tasks() -> dict[str, Path]:
    """task name -> its YAML file."""
    tasks = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        match = TASK_NAME.search(path.read_text())
        if match:
            tasks[match.group(1)] = path
    return tasks


def data_path(task_yaml: Path, value: str) -> Path:
    """A task YAML's data_files value as a path: ~ expanded, a relative path read next to the YAML."""
    return (task_yaml.parent / Path(value).expanduser()).resolve()


@dataclass(frozen=True)
class TaskSet:
    """The lm-eval tasks a run scores, resolved and checked before any model is loaded (resolve_tasks)."""

    names: list[str] = field(default_factory=list)  # as asked, in order
    local: list[Path] = field(default_factory=list)  # the YAMLs of the local ones (experiments/lm_eval_tasks)
    # lm-eval registry tasks, in order: a name, or {"task" (or "group"): name, "dataset_path": local copy} where
    # task_datasets gives one (lm_eval_registry.registry_objects merges it into the registered config)
    registry: list[str | dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.names)


def resolve_tasks(names, datasets: dict[str, str] | None = None, num_fewshot: int = 0,
                  prefix: str = "") -> TaskSet:
    """The named tasks, local or lm-eval's, checked before any model is loaded: an unknown name (with the closest
    match across both lists), a local task's missing data file, a task_datasets entry that names no task or no
    folder, num_fewshot where the task has no split to draw examples from, and, offline, a registry task whose
    dataset is neither cached nor given locally each raise naming the task and the fix. lm-eval's registry is
    indexed (~8.5 s on 2 cores, once per process) only when some name is not local.
    datasets: task -> a local copy of its dataset (task_datasets); prefix: where the fields live ("train.")."""
    names = [str(name) for name in names or []]
    datasets = {str(task): str(path) for task, path in (datasets or {}).items()}
    local = available_tasks()
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{prefix}tasks={names} names {name!r} twice; name each task once")
    outside = [name for name in names if name not in local]
    if outside:
        from harness.evaluation.lm_eval_registry import registry_index

        for name in outside:
            if name not in registry_index():
                raise ValueError(unknown_task(name, local, registry_index()))
    check_task_datasets(datasets, names, local, prefix)
    for name in names:
        if name in local:
            check_local_task(name, local[name], num_fewshot, prefix)
    registry = [registry_task(name, datasets.get(name), num_fewshot, prefix) for name in outside]
    return TaskSet(names, [local[name] for name in names if name in local], registry)


def unknown_task(name: str, local: dict[str, Path], index: dict) -> str:
    close = difflib.get_close_matches(name, [*local, *index], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown lm-eval task {name!r}.{hint} Local tasks in {TASKS_DIR}: {', '.join(local) or '(none)'}; "
            f"lm-eval's registry has {len(index):,} tasks, groups and tags (list them with `lm-eval ls tasks`)")


def check_task_datasets(datasets: dict[str, str], names: list[str], local: dict[str, Path], prefix: str) -> None:
    """Each task_datasets entry names a registry task being run and a folder that exists."""
    for task, path in datasets.items():
        name = f"{prefix}task_datasets.{task}"
        if task not in names:
            raise ValueError(f"{name}={path!r} names no task of {prefix}tasks={names}; give local copies only for "
                             "the lm-eval registry tasks being run")
        if task in local:
            raise ValueError(f"{name}={path!r}: {task!r} is a local task, whose YAML in {TASKS_DIR} names its own "
                             "data; task_datasets is for lm-eval registry tasks")
        if not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"{name}={path!r} is not a folder; give a folder that datasets.load_dataset(path, "
                                    "name) reads, such as `hf download --repo-type dataset <dataset repo> "
                                    "--local-dir <folder>` of the task's dataset")


def check_local_task(name: str, path: Path, num_fewshot: int, prefix: str) -> None:
    """A local task's data files exist (built tasks excepted: built at run time) and, for few-shot, it has a
    split to draw examples from besides the one it scores."""
    for match in DATA_FILES.finditer(path.read_text()):
        data = data_path(path, match.group(2))
        if name not in BUILT_TASKS and not data.is_file():
            raise FileNotFoundError(f"lm-eval task {name!r}: data_files {match.group(2)!r} ({data}) does not "
                                    f"exist; put the data there or point data_files in {path} at it")
    if num_fewshot:
        from lm_eval.tasks._yaml_loader import load_yaml

        from harness.evaluation.lm_eval_registry import fewshot_problem

        problem = fewshot_problem(name, load_yaml(path, resolve_func=False), num_fewshot, f"{prefix}num_fewshot")
        if problem:
            raise ValueError(problem)


def registry_task(name: str, dataset: str | None, num_fewshot: int, prefix: str) -> str | dict:
    """A registry task's TaskSet spec, once each task it evaluates (a group's or tag's members) passes the
    few-shot and dataset checks."""
    from lm_eval.tasks._index import Kind

    from harness.evaluation import lm_eval_registry as registry

    overrides = {"dataset_path": str(Path(dataset).expanduser().resolve())} if dataset else {}
    leaves = registry.leaf_configs(name, overrides)
    for task, cfg in leaves:
        problem = registry.fewshot_problem(task, cfg, num_fewshot, f"{prefix}num_fewshot")
        if problem:
            raise ValueError(problem if task == name else f"{name} (a group or tag): {problem}")
    problem = registry.missing_dataset(name, leaves, f"{prefix}task_datasets")
    if problem:
        raise FileNotFoundError(problem)
    if not overrides:
        return name
    return {"group" if registry.registry_index()[name].kind == Kind.GROUP else "task": name, **overrides}

def built_task_data(names, cache_dir=None) -> dict:
    """Build (once; cached) the data of the named tasks that are built rather than shipped -> {task: data}."""
    return {name: BUILT_TASKS.get(name)(cache_dir) for name in names if name in BUILT_TASKS}
