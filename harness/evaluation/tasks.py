"""Local lm-eval task files: experiments/lm_eval_tasks/*.yaml, each naming its JSONL data relative to itself.

A user adds ARC/HellaSwag/PIQA/WinoGrande (or anything lm-eval can describe) by dropping a task YAML and its data
there; `eval tasks=[name]` then runs it on full-precision, quantized and adapted models alike. A few tasks are not
shipped as data but built from the corpus at first use (BUILT_TASKS), so their YAML names a file that is not there.
"""

from __future__ import annotations

import difflib
import re
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


def task_files(names) -> list[Path]:
    """The YAML files of the named tasks. An unknown name raises with the closest match and the list; a data file
    that is not there raises naming it, so a missing local copy stops the run before any model is loaded."""
    tasks = available_tasks()
    for name in names:
        if name not in tasks:
            close = difflib.get_close_matches(name, list(tasks), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown lm-eval task {name!r}.{hint} Local tasks in {TASKS_DIR}: {', '.join(tasks) or '(none)'}")
        for match in DATA_FILES.finditer(tasks[name].read_text()):
            path = data_path(tasks[name], match.group(2))
            if name not in BUILT_TASKS and not path.is_file():
                raise FileNotFoundError(f"lm-eval task {name!r}: data_files {match.group(2)!r} ({path}) does not "
                                        f"exist; put the data there or point data_files in {tasks[name]} at it")
    return [tasks[name] for name in names]


def built_task_data(names, cache_dir=None) -> dict:
    """Build (once; cached) the data of the named tasks that are built rather than shipped -> {task: data}."""
    return {name: BUILT_TASKS.get(name)(cache_dir) for name in names if name in BUILT_TASKS}
