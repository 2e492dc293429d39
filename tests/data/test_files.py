"""harness.data.files: text files and JSONL load every document once; WikiText-2 offline says what to do."""

from __future__ import annotations

import json

import pytest

from harness.data.corpus import SPLITS, CorpusError, DataConfig, load_corpus


def _units(corpus) -> list[str]:
    return [unit for split in SPLITS for unit in getattr(corpus, split).split("\n\n")]


def test_text_file_and_jsonl_load_every_document_once(tmp_path):
    docs = [f"Document {i} says hello.\nSecond line {i}." for i in range(30)]
    text_path = tmp_path / "corpus.txt"
    text_path.write_text("\n\n".join(docs) + "\n")
    jsonl_path = tmp_path / "corpus.jsonl"
    jsonl_path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)) + "\n\n")
    for cfg in (
        DataConfig("text_file", path=str(text_path)),
        DataConfig("jsonl", path=str(jsonl_path), text_field="body"),
    ):
        corpus = load_corpus(cfg)
        found = sorted(_units(corpus))
        assert found == sorted(docs) and all(getattr(corpus, s) for s in SPLITS), cfg.name
    lines_path = tmp_path / "lines.txt"  # no blank lines: one document per line
    lines_path.write_text("\n".join(f"line {i}" for i in range(10)))
    corpus = load_corpus(DataConfig("text_file", path=str(lines_path)))
    assert sorted(_units(corpus)) == sorted(f"line {i}" for i in range(10))


def test_wikitext2_offline_says_what_to_do(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match="WikiText-2.*ConnectionError.*data=text_file"):
        load_corpus(DataConfig("wikitext2"))
