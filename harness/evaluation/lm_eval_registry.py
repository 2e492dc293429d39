"""lm-eval's own task registry (arc_easy, hellaswag, mmlu, ...): its index, built once per process, and the checks
a registry task needs before any model is loaded: where its few-shot examples would come from, and whether its
dataset can be read (a local copy, the datasets cache, or the hub).

The checks read the task YAMLs as lm-eval indexed them (includes resolved, `!function`s not imported) and never
build a task: building one makes lm-eval load its dataset.
"""

from __future__ import annotations

import functools
from pathlib import Path

from harness.hub import offline_reason


@functools.cache
def registry_manager():
    """lm-eval's TaskManager over its own task folder. Built once per process: indexing its ~14,700 YAMLs took
    ~8.5 s on 2 cores, and validation, every evaluated configuration and every training stage need it."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def registry_index() -> dict:
    """name -> lm-eval's index Entry (tasks, groups and tags)."""
    return registry_manager().task_index


def leaf_configs(name: str, overrides: dict | None = None) -> list[tuple[str, dict]]:
    """(task, config) of every task that naming `name` evaluates: itself, a tag's tasks, or a group's tasks at
    any depth, with the overrides lm-eval applies on the way (a group's own task fields, then the caller's)."""
    from lm_eval.tasks._index import Kind

    entry = registry_index()[name]
    if entry.kind == Kind.TAG:
        return [leaf for task in sorted(entry.tags) for leaf in leaf_configs(task, overrides)]
    if entry.kind == Kind.GROUP:
        return group_leaves(entry.cfg or {}, overrides or {})
    return [(name, {**(entry.cfg or {}), **(overrides or {})})]


def group_leaves(cfg: dict, overrides: dict) -> list[tuple[str, dict]]:
    """The leaves of a group config, following lm-eval's TaskFactory._build_group_members."""
    from lm_eval.config.group import GroupConfig

    group_fields = set(GroupConfig.__dataclass_fields__)
    inherited = {**{k: v for k, v in cfg.items() if k not in group_fields}, **overrides}
    index, leaves = registry_index(), []
    for item in cfg.get("task") or []:
        key = "group" if isinstance(item, dict) and "group" in item else "task"
        ref = item if isinstance(item, str) else item.get(key)
        extra = {k: v for k, v in item.items() if k != key} if isinstance(item, dict) else {}
        if ref in index:
            leaves += leaf_configs(ref, {**inherited, **extra})
        elif key == "group":  # an inline subgroup
            leaves += group_leaves(item, inherited)
        elif isinstance(item, dict):  # an inline task
            leaves.append((ref, {**inherited, **item}))
    return leaves


def fewshot_problem(task: str, cfg: dict, num_fewshot: int, field: str) -> str | None:
    """Why `num_fewshot` examples cannot be drawn for `task`, or None.

    lm-eval (0.4.13, ConfigurableTask.fewshot_docs) draws them from fewshot_split (or fewshot_config's split or
    samples) if the task names one, else from training_split, else validation_split, else the test split, with
    only a logged warning; the scored item itself is left out. A task whose fallback is the split it scores (a
    test-only task such as lambada_openai) would be prompted with other answered items of its own test set:
    refused. A task that fixes num_fewshot: 0 in its YAML ignores the setting (lm-eval's rule), so it passes.
    """
    if num_fewshot == 0 or cfg.get("num_fewshot") == 0:
        return None
    fewshot = cfg.get("fewshot_config") or {}
    if cfg.get("fewshot_split") or fewshot.get("split") or fewshot.get("samples"):
        return None
    scored = cfg.get("test_split") or cfg.get("validation_split")
    source = cfg.get("training_split") or cfg.get("validation_split") or cfg.get("test_split")
    if scored is None or source != scored:  # None: splits set in Python (a `class:` task), lm-eval's to judge
        return None
    return (f"{field}={num_fewshot}: lm-eval task {task!r} has no split to draw few-shot examples from (no "
            f"fewshot_split, training_split or validation_split besides the {scored!r} split it scores), so lm-eval "
            f"would take them from the scored items themselves; use {field}=0 for it")


def dataset_of(cfg: dict) -> tuple[str, str | None] | None:
    """(dataset_path, dataset_name) of a task config when it names a hub dataset; None for a local folder, a
    packaged builder (json, csv, ...) with its own data_files, or a task that builds its data in Python."""
    path = cfg.get("dataset_path")
    if not isinstance(path, str) or cfg.get("custom_dataset") or Path(path).expanduser().exists():
        return None
    from datasets.load import _PACKAGED_DATASETS_MODULES

    return None if path in _PACKAGED_DATASETS_MODULES else (path, cfg.get("dataset_name"))


def in_datasets_cache(path: str, name: str | None, kwargs: dict | None = None) -> bool:
    """Whether `datasets.load_dataset(path, name)` finds the dataset in its cache without the hub. Offline,
    datasets (5.2, CachedDatasetModuleFactory) reads a hub dataset through its `cache` builder, which looks for
    <HF_DATASETS_CACHE>/<namespace>___<name>/<config>/<version>/<hash>/dataset_info.json; the same builder is
    built here, so the check and the later load agree. A dataset only in the hub's file cache (HF_HOME/hub) does
    not count: offline, datasets does not read it."""
    from datasets.packaged_modules.cache.cache import Cache

    config_kwargs = {k: v for k, v in (kwargs or {}).items() if k != "trust_remote_code"}  # lm-eval drops it
    try:
        Cache(dataset_name=path.split("/")[-1], repo_id=path, config_name=name, version="auto", hash="auto",
              **config_kwargs)
    except ValueError:  # "Couldn't find cache for ..."
        return False
    return True


def missing_dataset(task: str, leaves: list[tuple[str, dict]], field: str) -> str | None:
    """The refusal for a registry task whose hub datasets are not all cached, when the hub cannot be reached;
    None when they are cached, given locally, or the hub is there to fetch them."""
    missing: dict[str, list[str]] = {}
    for _, cfg in leaves:
        dataset = dataset_of(cfg)
        if dataset and not in_datasets_cache(*dataset, cfg.get("dataset_kwargs")):
            missing.setdefault(dataset[0], []).append(dataset[1] or "default")
    if not missing:
        return None
    reason = offline_reason()
    if reason is None:
        return None
    path, names = next(iter(missing.items()))
    configs = ", ".join(names[:3]) + (f" and {len(names) - 3} more configurations" if len(names) > 3 else "")
    more = f" (and {len(missing) - 1} more datasets)" if len(missing) > 1 else ""
    return (f"lm-eval task {task!r} needs dataset {path} ({configs}){more}, which is not in the datasets cache "
            f"and the hub cannot be used ({reason}); connect once to cache it, or give a local copy: "
            f"+{field}.{task}=/path/to/a/snapshot of the dataset repo (hf download --repo-type dataset {path} "
            f"--local-dir /path/to/a/snapshot)")


def registry_objects(spec: str | dict) -> list:
    """What simple_evaluate is given for one TaskSet registry spec: the name itself, or for a spec with overrides
    ({"task": "arc_easy", "dataset_path": ...}) the Task, Group or tag's Tasks built with them merged into the
    registered config. lm-eval's own dict specs replace the config rather than merge into it (0.4.13:
    TaskManager._load_spec builds an inline task from the dict alone), so they are built here with lm-eval's
    TaskFactory, the way a group's YAML overrides its members."""
    if isinstance(spec, str):
        return [spec]
    from lm_eval.tasks._factory import TaskFactory

    overrides = dict(spec)
    name = overrides.pop("group", None) or overrides.pop("task")
    built = TaskFactory().build(registry_index()[name], overrides=overrides, registry=registry_index())
    return built if isinstance(built, list) else [built]
