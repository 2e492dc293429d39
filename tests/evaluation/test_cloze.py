"""harness.evaluation.cloze: austen_cloze is built from the test split only, deterministically, with well-formed items
(over 1000 on the real corpus); it runs end to end through `eval`, packed and one request at a time alike."""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest

from harness.data import corpus, janeausten
from harness.evaluation.cloze import MIN_CONTEXT_WORDS, STOPWORDS, ensure_cloze
from tests.evaluation.conftest import compose_eval

# disjoint vocabularies: an item holding a train word would have been built from train text
TEST_WORDS = ["Emma", "Harriet", "Knightley", "Highbury", "Hartfield", "garden", "letter", "carriage", "piano"]
TRAIN_WORDS = ["Zephyrine", "Quoxley", "Vashti", "Brambleford", "Ortolan", "umbrella", "kettle", "lantern"]
FILLER = ["the", "of", "and", "to", "a", "in", "was", "she", "it", "that", "not", "be", "her", "had", "for", "with",
          "as", "his", "at", "by", "very", "much"]


def synthetic_text(words: list[str], seed: int, chapters: int = 3, sentences: int = 60) -> str:
    """Chapters of sentences mixing function words and a few content words, ending in '.' or ',' (clause ends)."""
    rng = random.Random(seed)
    out = []
    for number in range(1, chapters + 1):
        body = []
        for _ in range(sentences):
            middle = [rng.choice(FILLER + words) for _ in range(rng.randint(6, 12))]
            body.append(" ".join([rng.choice(words).capitalize(), *middle, rng.choice(words)]) + rng.choice(".,"))
        paragraphs = [" ".join(body[i : i + 5]) for i in range(0, len(body), 5)]
        out.append(f"CHAPTER {number}\n\n" + "\n\n".join(paragraphs))
    return "\n\n".join(out)


def fake_cache(root) -> tuple:
    """A cache dir whose janeausten splits are synthetic (so nothing is fetched) -> (dir, the splits)."""
    splits = {"train": synthetic_text(TRAIN_WORDS, 1), "validation": synthetic_text(TEST_WORDS, 2),
              "test": synthetic_text(TEST_WORDS, 3)}
    folder = root / "janeausten"
    folder.mkdir(parents=True)
    (folder / f"splits-chapter-seed0-v{janeausten._SPLITS_FORMAT}.json").write_text(json.dumps(splits))
    return root, splits


def read_items(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_well_formed(items: list[dict], test_text: str) -> None:
    """Every item is a passage of the test text whose last word is the target; the passage is needed for it."""
    flat = re.sub(r"[ \t]+", " ", test_text)
    for item in items:
        context, target = item["context"], item["target"]
        words = [re.sub(r"[^a-z]", "", w.lower()) for w in context.split()]
        assert target.isalpha() and len(target) >= 3 and target.lower() not in STOPWORDS, item
        assert len(words) >= MIN_CONTEXT_WORDS, item
        assert target.lower() in words[:-1], item  # it occurs earlier in the passage...
        assert words[-1] != target.lower(), item  # ...but the prompt does not already end with it
        passage = f"{context} {target}"
        at = flat.find(passage)
        assert at >= 0, item  # a passage of the test text, ending with the target...
        assert flat[at + len(passage)] in ".,;:!?", item  # ...as a whole word (not the start of a longer one)


def test_builder_is_deterministic_and_reads_the_test_split_only(tmp_path):
    cache, splits = fake_cache(tmp_path / "a")
    built = ensure_cloze(cache)
    items = read_items(built.path)
    assert built.items == len(items) >= 20  # enough items for the assertions below to mean something
    assert_well_formed(items, splits["test"])
    train_words = {w.lower() for w in TRAIN_WORDS}
    assert not any(train_words & {w.strip(".,").lower() for w in i["context"].split()} for i in items)
    # the same splits in another cache, and a rebuild after deleting the file, give byte-identical items
    other, _ = fake_cache(tmp_path / "b")
    built.path.unlink()
    assert ensure_cloze(cache).sha256 == ensure_cloze(other).sha256 == built.sha256


def test_real_corpus_gives_over_1000_well_formed_items_from_its_test_split(tmp_path):
    try:
        books = janeausten.ensure_janeausten()  # the default cache's copy; splits are computed afresh below
    except corpus.CorpusError as err:
        pytest.skip(f"cannot fetch the Jane Austen corpus here: {err}")
    (tmp_path / "janeausten").mkdir()
    (tmp_path / "janeausten" / "books.json").write_bytes(books.read_bytes())
    built = ensure_cloze(tmp_path)
    items = read_items(built.path)
    texts = corpus.load_corpus(corpus.DataConfig(cache_dir=str(tmp_path)))
    assert len(items) >= 1000
    assert_well_formed(items, texts.test)
    train = re.sub(r"[ \t]+", " ", texts.train)
    assert not any(item["context"][:400] in train for item in items[::10])  # a sample: each find scans 3 MB
    # pinned: the items are a function of the corpus and the construction alone (bump cloze.FORMAT on change)
    assert built.sha256.startswith("97d95d9c5f9b")


def test_austen_cloze_runs_end_to_end_through_eval(tmp_path, monkeypatch):
    from harness.evaluation.run import run

    cache, _ = fake_cache(tmp_path / "cache")
    monkeypatch.setenv("HARNESS_CACHE", str(cache))  # the cloze data and the corpus both come from the fake cache
    common = ["model=tiny-llama", "model.max_positions=2048", "context_length=2048", "max_tokens=200",
              "tasks=[austen_cloze]", "task_limit=6", "+quantizer@quantizers.int4=int4",
              # fp32 logits on every CPU: with bf16 compute (auto on AVX512-BF16) lm-eval takes log_softmax of bf16
              # logits and the packed path of fp32 ones, a 2^-8 relative rounding apart, not a packing difference
              "compute_dtype=float32"]
    frame = run(compose_eval([*common, "task_batch_size=4", f"output_dir={tmp_path / 'packed'}"]))
    rows = frame[frame.metric.str.startswith("austen_cloze/")]
    assert {"austen_cloze/acc", "austen_cloze/perplexity"} <= set(rows.metric)
    assert sorted(rows.configuration.unique()) == ["full precision", "int4"] and (rows.status == "ok").all()
    assert (rows[rows.metric == "austen_cloze/sample_len"].value == 6).all()  # lm-eval's item count: task_limit
    saved = pd.read_parquet(tmp_path / "packed" / "eval.parquet")
    assert len(saved[saved.metric.str.startswith("austen_cloze/")]) == len(rows)
    record = json.loads((tmp_path / "packed" / "run.json").read_text())
    built = ensure_cloze(cache)
    assert record["resolved"]["task_data"]["austen_cloze"]["sha256"] == built.sha256
    # lm-eval's own one-request-at-a-time path gives the same metrics
    reference = run(compose_eval([*common, "task_batch_size=1", f"output_dir={tmp_path / 'reference'}"]))
    ours = rows.set_index(["configuration", "metric"]).value
    theirs = reference[reference.metric.str.startswith("austen_cloze/")].set_index(["configuration", "metric"]).value
    # float32 sums over ~1,100-token contexts in another order (masked keys, batched matmuls): ~1e-6 relative
    assert ours.to_dict() == pytest.approx(theirs.to_dict(), rel=1e-4)
