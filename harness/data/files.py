"""Corpora read from files: wikitext2 (the hub, through `datasets`), a local text file, a local JSON Lines file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.data.corpus import SPLITS, Corpus, CorpusError, DataConfig, split_units
from harness.registry import CORPORA


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
            f"data.path={cfg.path!r} has {len(units)} non-empty line{'s' if len(units) != 1 else ''} and no blank-line "
            "paragraphs; three splits (train, validation, test) need at least 3 paragraphs or lines: give more text"
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
