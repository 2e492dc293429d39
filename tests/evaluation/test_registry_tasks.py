"""lm-eval's own registry tasks by name (harness.evaluation.tasks.resolve_tasks, lm_eval_registry): lm-eval's
arc_easy YAML, scored offline from a local dataset folder and from the datasets cache, gives plain lm-eval's
accuracy; offline, a task whose dataset is not there stops the command before any model is loaded; an unknown
name gets the closest match across the local and registry lists.

Every test runs with the hub flagged offline and the caches in a temporary folder, so it runs the same on a machine
with or without network. lm-eval's registry is indexed once per process (~8.5 s), shared by the tests.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from harness import hub
from harness.evaluation import lm_eval_registry
from harness.evaluation.lm_eval_run import run_lm_eval_tasks, simple_evaluate_local
from harness.evaluation.tasks import resolve_tasks
from tests.conftest import harness_here

QUESTIONS = [  # (question, choices, answer): ARC-shaped items; the tiny model's answers are what they are
    ("Which gas do plants take in to make food?", ["oxygen", "carbon dioxide", "helium", "neon"], "B"),
    ("What is the boiling point of water at sea level?", ["50 C", "100 C", "150 C"], "B"),
    ("Which object is a magnet most likely to pick up?", ["a paper clip", "a rubber band", "a glass marble"], "A"),
    ("What causes day and night on Earth?", ["the Moon", "Earth's rotation", "the Sun's motion", "clouds"], "B"),
    ("Which is a renewable resource?", ["coal", "oil", "sunlight"], "C"),
    ("What do roots do for a plant?", ["take in water", "make seeds", "catch light", "attract bees"], "A"),
    ("Which state of matter has a fixed shape?", ["gas", "liquid", "solid"], "C"),
    ("Which tool measures temperature?", ["a ruler", "a thermometer", "a scale"], "B"),
    ("What do bees collect from flowers?", ["nectar", "sand", "bark", "salt"], "A"),
    ("Which planet is closest to the Sun?", ["Mars", "Venus", "Mercury", "Jupiter"], "C"),
    ("What happens to ice when it is heated?", ["it melts", "it grows", "it hardens"], "A"),
    ("Which animal is a mammal?", ["a shark", "a frog", "a whale", "a lizard"], "C"),
    ("What force pulls objects toward Earth?", ["magnetism", "gravity", "friction"], "B"),
    ("Which part of the body pumps blood?", ["the lungs", "the liver", "the heart", "the skin"], "C"),
    ("What is formed when water vapor cools?", ["clouds", "rocks", "soil"], "A"),
    ("Which material conducts electricity best?", ["wood", "copper", "plastic", "glass"], "B"),
]
SPLITS = {"train": QUESTIONS[:3], "test": QUESTIONS[3:]}  # 3 examples to draw from, 13 items scored


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The hub flagged offline and the caches in tmp_path. datasets and huggingface_hub read the flags and the
    cache folder at import, which has happened already, so their module attributes are set too."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def write_arc(folder):
    """A local copy shaped like the allenai/ai2_arc dataset repo: ARC-Easy/<split>.jsonl and a README whose
    `configs:` lets datasets.load_dataset(folder, "ARC-Easy") read it, as it reads an `hf download` snapshot."""
    (folder / "ARC-Easy").mkdir(parents=True)
    for split, questions in SPLITS.items():
        rows = [{"id": f"{split}{i}", "question": q, "answerKey": answer,
                 "choices": {"text": choices, "label": list("ABCD"[:len(choices)])}}
                for i, (q, choices, answer) in enumerate(questions)]
        (folder / "ARC-Easy" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = "".join(f"    - split: {split}\n      path: ARC-Easy/{split}.jsonl\n" for split in SPLITS)
    (folder / "README.md").write_text(f"---\nconfigs:\n  - config_name: ARC-Easy\n    data_files:\n{configs}---\n")
    return folder


def cache_as_an_online_run_would(folder):
    """Put ARC-Easy into the datasets cache where `load_dataset("allenai/ai2_arc", "ARC-Easy")` online leaves it
    (<cache>/allenai___ai2_arc/ARC-Easy/0.0.0/<revision>/, arrow files named ai2_arc-<split>.arrow), which is
    where datasets looks for it offline."""
    import shutil

    import datasets
    from datasets.packaged_modules.json.json import Json

    files = {split: [str(folder / "ARC-Easy" / f"{split}.jsonl")] for split in SPLITS}
    builder = Json(dataset_name="ai2_arc", config_name="ARC-Easy", config_id="ARC-Easy", data_files=files,
                   hash="0123456789abcdef")
    builder.download_and_prepare()
    root = datasets.config.HF_DATASETS_CACHE
    shutil.move(root / "ai2_arc", root / "allenai___ai2_arc")


def plain_lm_eval(model, tokenizer, num_fewshot: int) -> dict:
    """lm-eval's own simple_evaluate of arc_easy by name, reading allenai/ai2_arc from the datasets cache: HFLM on
    the model, one request at a time (lm-eval's TaskManager() with its own tasks: the one the harness keeps)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=128, batch_size=1, device="cpu")
    return simple_evaluate(model=lm, tasks=["arc_easy"], num_fewshot=num_fewshot,
                           task_manager=lm_eval_registry.registry_manager(), verbosity="ERROR")


def by_doc(samples: list[dict], field: str) -> list:
    return [sample[field] for sample in sorted(samples, key=lambda sample: sample["doc_id"])]


@pytest.mark.parametrize("num_fewshot", [0, 1])
def test_lm_evals_arc_easy_from_a_local_copy_or_the_cache_gives_plain_lm_evals_accuracy(tiny, offline, num_fewshot):
    model, tokenizer = tiny
    folder = write_arc(offline / "arc_copy")
    local = resolve_tasks(["arc_easy"], {"arc_easy": str(folder)}, num_fewshot)
    assert local.registry == [{"task": "arc_easy", "dataset_path": str(folder)}]
    # scored before anything is cached: from the local copy or not at all
    runs = [run_lm_eval_tasks(model, tokenizer, local, num_fewshot=num_fewshot, max_length=128)]
    cache_as_an_online_run_would(folder)
    cached = resolve_tasks(["arc_easy"], num_fewshot=num_fewshot)  # found in the cache: no local copy needed
    assert cached.registry == ["arc_easy"]
    runs.append(run_lm_eval_tasks(model, tokenizer, cached, num_fewshot=num_fewshot, max_length=128))
    out = plain_lm_eval(model, tokenizer, num_fewshot)
    plain, plain_items = out["results"]["arc_easy"], by_doc(out["samples"]["arc_easy"], "acc")

    keys = []
    for scores in runs:
        metrics, items = scores.metrics["arc_easy"], scores.items["arc_easy"]
        # ratios of counts over the same 13 items, scored by the same HFLM path: equal, not close
        assert (metrics["acc"], metrics["acc_norm"]) == (plain["acc,none"], plain["acc_norm,none"])
        assert items["doc_id"] == list(range(13)) and items["acc"] == plain_items  # item by item, too
        assert np.mean(items["acc"]) == pytest.approx(metrics["acc"], abs=1e-12)  # a mean of 0/1: rounding only
        keys.append(items["key"])
    fewer = run_lm_eval_tasks(model, tokenizer, local, limit=3, max_length=128).items["arc_easy"]["key"]
    assert keys[0] == keys[1] != fewer  # the same items from either source pair up; other items do not


def test_few_shot_prompts_are_plain_lm_evals_drawn_from_the_training_split(tiny, offline):
    """The tiny model's answers hardly depend on the context, so accuracy alone would not show few-shot at work:
    the prompts are compared (the requests' (context, continuation) pairs, item by item)."""
    model, tokenizer = tiny
    folder = write_arc(offline / "arc_copy")
    tasks = resolve_tasks(["arc_easy"], {"arc_easy": str(folder)}, num_fewshot=2)
    ours = simple_evaluate_local(model, tokenizer, tasks, num_fewshot=2, max_length=128, log_samples=True)
    prompts = by_doc(ours["samples"]["arc_easy"], "arguments")
    cache_as_an_online_run_would(folder)  # for plain lm-eval, which reads arc_easy's own dataset
    assert prompts == by_doc(plain_lm_eval(model, tokenizer, 2)["samples"]["arc_easy"], "arguments")
    train = {f"Question: {q}" for q, _, _ in SPLITS["train"]}
    for requests in prompts:
        assert sum(question in requests[0][0] for question in train) == 2  # two examples, both from train


def test_offline_a_task_without_its_dataset_stops_before_any_model_is_loaded(offline, monkeypatch):
    import harness.models.sources

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(harness.models.sources, "load_model", no_loading)
    done = harness_here("eval", "model=tiny-llama", "tasks=[arc_easy]", f"output_dir={offline / 'out'}")
    assert done.returncode == 2, done.stderr
    line, = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: lm-eval task 'arc_easy' needs dataset allenai/ai2_arc (ARC-Easy)")
    assert "+task_datasets.arc_easy=" in line and "connect once" in line
    with pytest.raises(FileNotFoundError, match=r"'mmlu' needs dataset cais/mmlu .*train\.task_datasets\.mmlu="):
        resolve_tasks(["mmlu"], prefix="train.")  # a group: each of its tasks is checked


def test_hub_probe_tells_a_server_that_answers_from_none(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(flag, raising=False)  # a proxy would be asked instead of the endpoint
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # answers HEAD with 501: still an answer
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert hub.offline_reason() is None
    server.shutdown()
    server.server_close()
    hub.answers.cache_clear()  # the answer is kept per process; the port is closed now
    assert hub.offline_reason() == f"{endpoint} does not answer within 3 s"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"


def test_unknown_names_get_the_closest_match_across_local_and_registry_tasks():
    for wrong, right in [("arc_eazy", "arc_easy"), ("hellaswg", "hellaswag"), ("austen_clozee", "austen_cloze")]:
        with pytest.raises(ValueError, match=rf"unknown lm-eval task '{wrong}'\. Did you mean '{right}'\? Local "
                                             r"tasks in .*lm_eval_tasks: .*lm-eval's registry has"):
            resolve_tasks([wrong])


def test_local_names_resolve_without_indexing_lm_evals_registry(monkeypatch):
    def no_index():
        raise AssertionError("lm-eval's registry was indexed")

    monkeypatch.setattr(lm_eval_registry, "registry_index", no_index)
    tasks = resolve_tasks(["austen_next_sentence", "austen_cloze"])
    assert [path.stem for path in tasks.local] == tasks.names and tasks.registry == []


def test_task_datasets_and_num_fewshot_are_checked_against_the_tasks(offline):
    folder = write_arc(offline / "arc_copy")
    with pytest.raises(FileNotFoundError, match=r"task_datasets\.arc_easy='/no/such/copy' is not a folder"):
        resolve_tasks(["arc_easy"], {"arc_easy": "/no/such/copy"})
    with pytest.raises(ValueError, match=r"task_datasets\.arc_challenge=.* names no task of tasks=\['arc_easy'\]"):
        resolve_tasks(["arc_easy"], {"arc_easy": str(folder), "arc_challenge": str(folder)})
    # test-only tasks, local or lm-eval's: few-shot examples would be drawn from the scored items
    for name in ("lambada_openai", "austen_next_sentence"):
        datasets = {name: str(folder)} if name == "lambada_openai" else {}
        with pytest.raises(ValueError, match=rf"num_fewshot=1: lm-eval task '{name}' has no split to draw"):
            resolve_tasks([name], datasets, num_fewshot=1)
    assert resolve_tasks(["arc_easy"], {"arc_easy": str(folder)}, num_fewshot=5).names == ["arc_easy"]  # train


def test_a_group_runs_every_subtask_from_one_local_copy(tiny, offline):
    """mmlu, lm-eval's group of 57 subject tasks in 4 subgroups: one task_datasets entry serves them all (a copy
    shaped like cais/mmlu, one config per subject; the same two questions each, one scored per subject here)."""
    model, tokenizer = tiny
    subjects = sorted({cfg["dataset_name"] for _, cfg in lm_eval_registry.leaf_configs("mmlu")})
    folder = offline / "mmlu_copy"
    (folder / "data").mkdir(parents=True)
    for split in ("test", "dev"):  # dev: mmlu's fewshot_split
        rows = [{"question": f"{split} question {i}?", "subject": "x", "answer": i,
                 "choices": ["one", "two", "three", "four"]} for i in range(2)]
        (folder / "data" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    configs = "".join(f"  - config_name: {subject}\n    data_files:\n" + "".join(
        f"      - split: {split}\n        path: data/{split}.jsonl\n" for split in ("test", "dev"))
        for subject in subjects)
    (folder / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")

    tasks = resolve_tasks(["mmlu"], {"mmlu": str(folder)}, num_fewshot=1)
    assert tasks.registry == [{"group": "mmlu", "dataset_path": str(folder)}]
    scores = run_lm_eval_tasks(model, tokenizer, tasks, limit=1, num_fewshot=1, max_length=256, batch_size=4)
    leaves = [f"mmlu_{subject}" for subject in subjects]
    assert len(leaves) == 57 and set(scores.items) == set(leaves)
    assert {"mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other"} <= set(scores.metrics)
    # mmlu's acc: the mean over all items (weighted by subtask size), here one item per subject; rounding only
    assert scores.metrics["mmlu"]["acc"] == pytest.approx(np.mean([scores.items[t]["acc"][0] for t in leaves]),
                                                          abs=1e-12)
