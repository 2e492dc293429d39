"""Text corpora for calibration, training and evaluation: a registry of loaders, splits, tokenise + pack.

`load_corpus(DataConfig(name=...))` gives a Corpus of three strings (train / validation / test). Corpora
without official splits are cut into whole units (chapters, books, documents, paragraphs) and each unit
goes to exactly one split, chosen by a seeded hash, so splits never overlap and never change between runs.

The default corpus, `janeausten`, is Jane Austen's six novels from Debian's `r-cran-janeaustenr` package,
fetched once with `apt-get download` (no root, no R) into the cache and parsed by harness.rdata.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import default_cache_dir, validated
from harness.rdata import read_lazyload
from harness.registry import CORPORA, RegistryError

FILE_CORPORA = ("text_file", "jsonl")  # the corpora that read data.path
SPLIT_BY = ("chapter", "book")
HELDOUT_FRACTION = 0.1  # of the units, for validation and again for test
SPLITS = ("train", "validation", "test")


class CorpusError(ValueError):
    """A corpus that is missing, empty, unreadable or cannot be fetched; the message says how to get it."""


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


# ---------------------------------------------------------------- janeausten

JANEAUSTEN_PACKAGE = "r-cran-janeaustenr"
JANEAUSTEN_BOOKS = {  # object name in the package's data -> title
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
# split_by=book: the four novels published in her lifetime train; the two published posthumously (1817) are held
# out. A fixed choice rather than a seeded one: the novels differ 2x in length, and this keeps ~78% for training.
JANEAUSTEN_HELDOUT_BOOKS = {"Northanger Abbey": "validation", "Persuasion": "test"}
_CHAPTER = re.compile(r"^chapter\s+[\divxlc]+\s*$", re.IGNORECASE)
_SPLITS_FORMAT = 1  # bump when the split rule changes, so stale cached splits are not reused


def _how_to_get_janeausten(root: Path, why: str) -> CorpusError:
    return CorpusError(
        f"could not fetch the Jane Austen corpus: {why}.\n"
        f"Get it by hand (no root needed): `cd {root} && apt-get download {JANEAUSTEN_PACKAGE}` (run "
        f"`sudo apt-get update` first on a fresh machine), or download the .deb from "
        f"https://packages.debian.org/bookworm/all/{JANEAUSTEN_PACKAGE}/download into {root}/, then run again. "
        f"Or pick another corpus: data=wikitext2, or data=text_file data.path=FILE."
    )


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=600)


def _download_deb(root: Path, into: Path) -> Path:
    """The package's .deb: one the user put in `root`, else `apt-get download` into `into`."""
    deb = next(iter(sorted(root.glob(f"{JANEAUSTEN_PACKAGE}_*.deb"))), None)
    if deb:
        return deb
    if not shutil.which("apt-get"):
        raise _how_to_get_janeausten(root, "apt-get is not available on this machine")
    result = _run(["apt-get", "download", JANEAUSTEN_PACKAGE], into)
    if result.returncode != 0 and os.geteuid() == 0:  # a fresh machine has no package lists yet
        _run(["apt-get", "update"], into)
        result = _run(["apt-get", "download", JANEAUSTEN_PACKAGE], into)
    debs = sorted(into.glob(f"{JANEAUSTEN_PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        raise _how_to_get_janeausten(
            root, f"`apt-get download {JANEAUSTEN_PACKAGE}` failed: {result.stderr.strip()[-400:]}"
        )
    return debs[0]


def ensure_janeausten(cache_dir: str | Path | None = None) -> Path:
    """Fetch and parse the novels once; returns `<cache>/janeausten/books.json` ({title: [lines]})."""
    root = Path(cache_dir or default_cache_dir()) / "janeausten"
    books = root / "books.json"
    if books.is_file():
        return books
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        deb = _download_deb(root, Path(tmp))
        if not shutil.which("dpkg-deb"):
            raise _how_to_get_janeausten(root, "dpkg-deb is not available to unpack the .deb")
        result = _run(["dpkg-deb", "-x", str(deb), tmp], Path(tmp))
        package = Path(tmp) / "usr/lib/R/site-library/janeaustenr"
        if result.returncode != 0 or not (package / "data/Rdata.rdb").is_file():
            raise _how_to_get_janeausten(
                root, f"{deb} did not unpack to {package}/data/Rdata.rdb: {result.stderr.strip()}"
            )
        objects = read_lazyload(package / "data/Rdata")
        missing = sorted(set(JANEAUSTEN_BOOKS) - set(objects))
        if missing:
            raise CorpusError(f"{deb} lacks the novels {missing}; it holds {sorted(objects)}")
        shutil.copy(Path(tmp) / f"usr/share/doc/{JANEAUSTEN_PACKAGE}/copyright", root / "copyright")
        _write_json(books, {title: objects[key] for key, title in JANEAUSTEN_BOOKS.items()})
    return books


def _paragraphs(lines: list[str]) -> str:
    # Project Gutenberg hard-wraps at ~70 columns; rejoin each paragraph onto one line so newlines mark
    # paragraph breaks only (as in WikiText).
    text = "\n".join(line.strip() for line in lines)
    return "\n\n".join(" ".join(p.split("\n")) for p in re.split(r"\n{2,}", text.strip()))


def austen_chapters(lines: list[str]) -> list[str]:
    """A novel's lines -> its chapters' texts; the front matter (title, author, VOLUME I) opens chapter 1."""
    starts = [i for i, line in enumerate(lines) if _CHAPTER.match(line)]
    if not starts:
        raise CorpusError(
            "no chapter headings found: the janeausten cache looks damaged; delete it and rerun"
        )
    bounds = [0, *starts[1:], len(lines)]
    return [_paragraphs(lines[a:b]) for a, b in itertools.pairwise(bounds)]


@CORPORA.register(
    "janeausten", "Jane Austen's six novels (~717K words, public domain), split by chapter or book"
)
def _janeausten(cfg: DataConfig) -> Corpus:
    root = Path(cfg.cache_dir) / "janeausten"
    seeded = f"-seed{cfg.seed}" if cfg.split_by == "chapter" else ""
    cached = root / f"splits-{cfg.split_by}{seeded}-v{_SPLITS_FORMAT}.json"
    if not cached.is_file():
        books = json.loads(ensure_janeausten(cfg.cache_dir).read_text())
        chapters = {title: austen_chapters(lines) for title, lines in books.items()}
        if cfg.split_by == "book":
            novels = {title: "\n\n".join(ch) for title, ch in chapters.items()}
            held = dict(JANEAUSTEN_HELDOUT_BOOKS)
            train = "\n\n".join(text for title, text in novels.items() if title not in held)
            splits = {"train": train, **{split: novels[title] for title, split in held.items()}}
        else:
            units = [text for ch in chapters.values() for text in ch]
            keys = [f"{title}/{i}" for title, ch in chapters.items() for i in range(len(ch))]
            splits = dict(zip(SPLITS, split_units(units, cfg.seed, keys)))
        _write_json(cached, splits)
    return Corpus("janeausten", **json.loads(cached.read_text()))


# ---------------------------------------------------------------- other corpora


@CORPORA.register(
    "wikitext2", "WikiText-2 raw (Wikipedia articles, official splits) via `datasets`; needs the hub"
)
def _wikitext2(cfg: DataConfig) -> Corpus:
    try:
        import datasets

        ds = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1")
    except Exception as err:  # offline, hub errors, missing package: all end the same way
        raise CorpusError(
            f"could not load WikiText-2 from the Hugging Face hub ({type(err).__name__}: {err}). It needs the hub "
            "once (then the datasets cache serves it; HF_DATASETS_OFFLINE=1 to force the cache). Offline, use the "
            "default corpus (data=janeausten) or a local file (data=text_file data.path=FILE)."
        ) from err
    return Corpus("wikitext2", *("".join(ds[split]["text"]) for split in SPLITS))


def _read(cfg: DataConfig) -> str:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise CorpusError(
            f"data.path={cfg.path!r} (corpus {cfg.name}) is not a file; point data.path at an existing file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(
            f"data.path={cfg.path!r} is unreadable as UTF-8 text ({err}); convert it, e.g. with iconv"
        ) from err
    if not text.strip():
        raise CorpusError(
            f"data.path={cfg.path!r} is empty; it needs text to split into train/validation/test"
        )
    return text


@CORPORA.register(
    "text_file", "a local UTF-8 text file (data.path), split by paragraph (by line if <3 paragraphs)"
)
def _text_file(cfg: DataConfig) -> Corpus:
    text = _read(cfg).strip()
    units = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(units) < 3:  # a file without blank lines: one document per line
        units = [line for line in text.splitlines() if line.strip()]
    if len(units) < 3:
        raise CorpusError(
            f"data.path={cfg.path!r} has {len(units)} lines; three splits need at least 3 paragraphs or lines"
        )
    return Corpus("text_file", *split_units(units, cfg.seed))


@CORPORA.register("jsonl", "a local JSON Lines file (data.path), one document per line in data.text_field")
def _jsonl(cfg: DataConfig) -> Corpus:
    docs = []
    for lineno, line in enumerate(_read(cfg).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"data.path={cfg.path!r} line {lineno} is not JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get(cfg.text_field), str):
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise CorpusError(
                f"data.path={cfg.path!r} line {lineno} has no string field data.text_field={cfg.text_field!r} "
                f"(it has {keys}); set data.text_field to the key that holds the text"
            )
        if row[cfg.text_field].strip():
            docs.append(row[cfg.text_field])
    if len(docs) < 3:
        raise CorpusError(
            f"data.path={cfg.path!r} has {len(docs)} non-empty documents; three splits need at least 3"
        )
    return Corpus("jsonl", *split_units(docs, cfg.seed))


# ---------------------------------------------------------------- tokenise and pack

_PARAGRAPH_BREAK = re.compile(r"(?<!\n)(?=\n\n)")


def _chunks(text: str, max_chars: int) -> Iterator[str]:
    """Consecutive pieces of `text` (joining back to it exactly), cut just before paragraph breaks."""
    chunk = ""
    for piece in _PARAGRAPH_BREAK.split(text):
        if chunk and len(chunk) + len(piece) > max_chars:
            yield chunk
            chunk = ""
        chunk += piece
    if chunk:
        yield chunk


def tokenize(text: str, tokenizer: Any, add_bos: bool = False, chunk_chars: int = 2048) -> torch.Tensor:
    """text -> token ids, LongTensor (n_tokens,): no special tokens but an optional leading BOS.

    Long texts are encoded in chunks of about `chunk_chars` characters (~500 tokens of English, below any
    model's maximum length, so the tokenizer does not warn), cut *before* a paragraph break: byte-level BPE
    pre-tokenizers attach a whitespace run to what follows it, so these cuts split exactly as the whole text.
    """
    chunks = list(_chunks(text, chunk_chars))
    encoded = tokenizer(chunks, add_special_tokens=False, verbose=False)["input_ids"] if chunks else []
    ids = [i for chunk in encoded for i in chunk]
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError(
                f"add_bos=True but {type(tokenizer).__name__} has no bos_token; use add_bos=False"
            )
        ids.insert(0, tokenizer.bos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def pack(ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Token ids (n_tokens,) -> consecutive blocks (n_tokens // block_size, block_size); the remainder is dropped."""
    if ids.dim() != 1:
        raise ValueError(f"pack expects token ids of shape (n_tokens,), got {tuple(ids.shape)}")
    n_blocks = ids.numel() // block_size
    if n_blocks < 1:
        raise ValueError(
            f"{ids.numel()} tokens make no block of block_size={block_size}; use a smaller data.block_size or more text"
        )
    return ids[: n_blocks * block_size].view(n_blocks, block_size)


def token_blocks(cfg: DataConfig, tokenizer: Any, split: str = "train") -> torch.Tensor:
    """One split of cfg's corpus, tokenised and packed: LongTensor (n_blocks, cfg.block_size)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    return pack(tokenize(getattr(load_corpus(cfg), split), tokenizer), cfg.block_size)
