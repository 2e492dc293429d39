"""The default corpus: Jane Austen's six novels from Debian's `r-cran-janeaustenr` package, fetched once with
`apt-get download` (no root, no R) into the cache and parsed by harness.data.rdata. Split by chapter (seeded) or by book.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.config import default_cache_dir
from harness.data.corpus import SPLITS, Corpus, CorpusError, DataConfig, _write_json, split_units
from harness.data.rdata import read_lazyload
from harness.registry import CORPORA

# a chapter heading line ("CHAPTER XII", "Chapter 3"): where the novels are cut into chapters (and cloze passages)
CHAPTER_HEADING = r"^chapter\s+[\divxlc]+\s*$"
CHAPTER = re.compile(CHAPTER_HEADING, re.IGNORECASE)

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
    starts = [i for i, line in enumerate(lines) if CHAPTER.match(line)]
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
