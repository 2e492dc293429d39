"""Text corpora for calibration, training and evaluation: the schema, the three splits, the loader lookup.

`load_corpus(DataConfig(name=...))` gives a Corpus of three strings (train / validation / test). Corpora
without official splits are cut into whole units (chapters, books, documents, paragraphs) and each unit
goes to exactly one split, chosen by a seeded hash, so splits never overlap and never change between runs.

Each corpus registers its loader in its own module (janeausten.py, files.py); tokens.py tokenises and packs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import default_cache_dir, validated
from harness.registry import CORPORA, RegistryError
from harness.user_error import UserError

FILE_CORPORA = ("text_file", "jsonl")  # the corpora that read data.path

SPLIT_BY = ("chapter", "book")

HELDOUT_FRACTION = 0.1  # of the units, for validation and again for test

SPLITS = ("train", "validation", "test")


class CorpusError(UserError, ValueError):
    """A corpus that is missing, empty, too short, unreadable or cannot be fetched: always about what the user gave
    or has, so a command prints it as one line (a UserError) wherever it is found; the message says how to fix it."""


@dataclass
class DataConfig:
    """Which corpus, how to split it, how to pack it (experiments/data/*.yaml)."""

    name: str = "janeausten"  # a registered corpus: janeausten, wikitext2, text_file, jsonl
    path: str | None = None  # text_file / jsonl: the file to read
    text_field: str = "text"  # jsonl: the key holding each document's text
    split_by: str = "chapter"  # janeausten: "chapter" or "book" (4 novels train, 1 validation, 1 test)
    seed: int = 0  # which units (chapters, documents) go to validation and test; split_by=book is fixed
    block_size: int = 1024  # tokens per packed block
    cache_dir: str | None = None  # None: $HARNESS_CACHE, else ~/.cache/quant-harness

    def __post_init__(self) -> None:
        try:
            CORPORA.entry(self.name)
        except RegistryError as err:
            raise RegistryError(f"data.name: {err}") from None
        if self.name in FILE_CORPORA and not self.path:
            raise ValueError(
                f"data.path is required for corpus {self.name!r}; set data.path=/path/to/your/file"
            )
        if self.name in FILE_CORPORA and not Path(self.path).expanduser().is_file():
            raise CorpusError(f"data.path={self.path!r} is not a file; set data.path to an existing "
                              f"{'JSONL' if self.name == 'jsonl' else 'text'} file")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"data.split_by={self.split_by!r} is not supported; use one of {list(SPLIT_BY)}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(
                f"data.block_size={self.block_size!r} must be a positive number of tokens (e.g. 1024)"
            )
        if not self.text_field:
            raise ValueError("data.text_field is empty; name the JSONL key that holds the text (e.g. text)")
        if self.cache_dir is None:
            self.cache_dir = str(default_cache_dir())


@dataclass(frozen=True)
class Corpus:
    name: str
    train: str
    validation: str
    test: str

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            s: {"characters": len(getattr(self, s)), "words": len(getattr(self, s).split())} for s in SPLITS
        }

    def describe(self) -> str:
        rows = [f"{self.name}: {'split':<10} {'characters':>12} {'words':>10}"]
        for split, st in self.stats().items():
            rows.append(f"{'':{len(self.name) + 2}}{split:<10} {st['characters']:>12,} {st['words']:>10,}")
        return "\n".join(rows)


def load_corpus(cfg: DataConfig | None = None) -> Corpus:
    cfg = cfg or DataConfig()
    return CORPORA.get(cfg.name)(cfg)


def check_corpus(cfg: DataConfig, seq_len: int | None = None, field: str = "train.seq_len") -> Corpus:
    """Load the corpus (text only, no model) and refuse, naming its size and the size needed, one with an empty
    split or, given seq_len, a training split too short for one block of seq_len tokens. A token spans at least
    one byte of UTF-8 (byte-level BPE, SentencePiece's byte fallback), so fewer bytes than seq_len can never make
    a block; the exact token count is checked again once the tokenizer is loaded (harness.data.tokens.pack_split)."""
    corpus = load_corpus(cfg)
    where = f"corpus {cfg.name!r}" + (f" (data.path={cfg.path!r})" if cfg.path else "")
    sizes = {split: len(getattr(corpus, split).encode()) for split in SPLITS}
    empty = [split for split, size in sizes.items() if not getattr(corpus, split).strip()]
    if empty:
        raise CorpusError(f"{where}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
                          f"(splits: {', '.join(f'{s} {n:,} bytes' for s, n in sizes.items())}); give more text, "
                          "at least 3 paragraphs or lines, or another corpus")
    if seq_len is not None and sizes["train"] < seq_len:
        raise CorpusError(f"{where}: the train split is {sizes['train']:,} byte{'s' * (sizes['train'] != 1)}, so fewer "
                          f"than the {seq_len:,} tokens "
                          f"of one training block ({field}={seq_len}); lower {field} or give more text")
    return corpus


def data_config(node: Any) -> DataConfig:
    """A composed `data` node (DictConfig or dict) -> the validated DataConfig."""
    return validated(DataConfig, node)


def split_units(units: list[str], seed: int, keys: list[str] | None = None) -> tuple[str, str, str]:
    """Whole units -> (train, validation, test) texts, each joined by blank lines in their original order.

    Units are ranked by sha256(seed, key); the first HELDOUT_FRACTION go to validation, the next to test
    (at least one each). Keys default to the units' positions; give stable names when units can move.
    """
    if len(units) < 3:
        raise ValueError(
            f"need at least 3 units (chapters, documents, paragraphs) for three splits, got {len(units)}"
        )
    keys = keys or [str(i) for i in range(len(units))]
    rank = sorted(range(len(units)), key=lambda i: hashlib.sha256(f"{seed}:{keys[i]}".encode()).digest())
    n_held = max(1, round(HELDOUT_FRACTION * len(units)))
    held = {
        i: split
        for split, part in (("validation", rank[:n_held]), ("test", rank[n_held : 2 * n_held]))
        for i in part
    }
    return tuple("\n\n".join(u for i, u in enumerate(units) if held.get(i, "train") == s) for s in SPLITS)


def _write_json(path: Path, obj: Any) -> None:
    # write-then-rename: a concurrent reader never sees half a file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False))
    os.replace(tmp, path)


