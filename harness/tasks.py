"""Local lm-eval task files: experiments/lm_eval_tasks/*.yaml, each naming its JSONL data relative to itself.

A user adds ARC/HellaSwag/PIQA/WinoGrande (or anything lm-eval can describe) by dropping a task YAML and its data
there; `eval tasks=[name]` then runs it on full-precision, quantized and adapted models alike.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from harness.config import EXPERIMENTS_DIR

TASKS_DIR = EXPERIMENTS_DIR / "lm_eval_tasks"  # not a Hydra group: lm-eval reads these files itself


def available_tasks() -> dict[str, Path]:
    """task name -> its YAML file."""
    tasks = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        match = re.search(r"^task:\s*(\S+)", path.read_text(), re.MULTILINE)
        if match:
            tasks[match.group(1)] = path
    return tasks


def task_files(names) -> list[Path]:
    """The YAML files of the named tasks; an unknown name raises with the closest match and the list."""
    tasks = available_tasks()
    for name in names:
        if name not in tasks:
            close = difflib.get_close_matches(name, list(tasks), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown lm-eval task {name!r}.{hint} Local tasks in {TASKS_DIR}: {', '.join(tasks) or '(none)'}")
    return [tasks[name] for name in names]
