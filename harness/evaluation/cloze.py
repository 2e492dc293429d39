"""austen_cloze: a LAMBADA-style task built from the embedded corpus's test split, at first use, into the cache.

Each item is a passage of at least MIN_CONTEXT_WORDS words from one test chapter; the model must predict the
passage's final word. As in LAMBADA's construction, targets are chosen so that the passage is needed: a content
word (not a function word) that ends a sentence or clause and already occurs earlier in the passage, so reading
the passage, not grammar alone, tells which word comes. Built from the test split only (the default `janeausten`
split, chapter-wise, seed 0), so no item's text was seen by `train` on the default data.
The build is deterministic (no randomness at all), and the items' sha256 goes into run.json.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.config import default_cache_dir
from harness.data.janeausten import CHAPTER_HEADING
from harness.registry import BUILT_TASKS

TASK = "austen_cloze"
FORMAT = 2  # bump when the construction changes, so a stale cached build is not reused
MIN_CONTEXT_WORDS = 200  # ~280 tokens of Austen with SmolLM2's tokenizer: "a passage of a few hundred tokens"
MIN_TARGET_CHARS = 3
# Function words, pronouns, auxiliaries and titles: predictable from grammar alone (or abbreviations such as
# "Mrs." that look sentence-final), so they would not test whether the model uses the passage.
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other ought our ours ourselves out over own same shall she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would yet you your yours yourself yourselves one ever never must
may might upon said say says much many well still also though indeed else either neither
mr mrs miss dr st esq sir madam
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_CHAPTER = re.compile(CHAPTER_HEADING, re.IGNORECASE | re.MULTILINE)  # the lines the corpus cuts chapters at
_TOKEN = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"')_]*$")  # a token that closes a sentence, maybe inside quotes or italics
_TITLES = re.compile(r"(Mr|Mrs|Dr|St)\.$")  # ...but "Mr. Darcy" does not: a passage must not open at "Darcy"
# a plain word closing a sentence or clause (its punctuation is left out, as LAMBADA leaves it out): the target.
# Clause ends too, because sentence ends alone give only ~420 items in the test split.
_TARGET = re.compile(r"([A-Za-z]+)[.!?,;:][\"')_]*")


@dataclass(frozen=True)
class ClozeData:
    path: Path
    sha256: str  # of the JSONL file's bytes: equal hashes, identical items
    items: int

    def record(self) -> dict:
        """What run.json keeps about the task's data."""
        return {"path": str(self.path), "sha256": self.sha256, "items": self.items, "format": FORMAT}


def _letters(token: str) -> str:
    return re.sub(r"[^a-z]", "", token.lower())


def chapter_items(chapter: str) -> list[dict]:
    """The cloze items of one chapter: {"context": passage without its final word, "target": that word}."""
    tokens = list(_TOKEN.finditer(chapter))
    # the first token of every sentence: a passage starts there, so it never opens mid-sentence
    starts = [0] + [i + 1 for i, t in enumerate(tokens[:-1])
                    if _SENTENCE_END.search(t.group()) and not _TITLES.search(t.group())]
    items = []
    for i, token in enumerate(tokens):
        match = _TARGET.fullmatch(token.group())
        if not match or i < 1:
            continue
        word = match.group(1)
        lower = word.lower()
        if len(word) < MIN_TARGET_CHARS or lower in STOPWORDS:
            continue
        if chapter[token.start() - 1] != " ":  # the target must follow its context on the same line
            continue
        # the passage opens at the latest sentence start that leaves MIN_CONTEXT_WORDS words before the target
        k = bisect.bisect_right(starts, i - MIN_CONTEXT_WORDS) - 1
        if k < 0:
            continue
        first = starts[k]
        context_words = {_letters(t.group()) for t in tokens[first:i]}
        if lower not in context_words or _letters(tokens[i - 1].group()) == lower:
            continue  # not recoverable from the passage, or a plain repetition of the word just before
        context = chapter[tokens[first].start() : token.start()].rstrip()
        items.append({"context": re.sub(r"[ \t]+", " ", context), "target": word})
    return items


def build_items(test_text: str) -> list[dict]:
    """Every item of the test text, chapter by chapter, in text order (a passage never spans two chapters)."""
    chapters = _CHAPTER.split(test_text)
    return [item for chapter in chapters for item in chapter_items(chapter.strip())]


@BUILT_TASKS.register(TASK, "LAMBADA-style cloze built from the test split of the Austen corpus")
def ensure_cloze(cache_dir: str | Path | None = None) -> ClozeData:
    """Build the task's JSONL once into <cache>/lm_eval_tasks/ and return it with its hash."""
    path = Path(cache_dir or default_cache_dir()) / "lm_eval_tasks" / f"{TASK}-v{FORMAT}.jsonl"
    if not path.is_file():
        from harness.data.corpus import DataConfig, load_corpus

        corpus = load_corpus(DataConfig(name="janeausten", cache_dir=str(cache_dir) if cache_dir else None))
        text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in build_items(corpus.test))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # write-then-rename: no half-built task
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    data = path.read_bytes()
    return ClozeData(path, hashlib.sha256(data).hexdigest(), data.count(b"\n"))
