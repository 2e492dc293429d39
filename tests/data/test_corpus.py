"""harness.data.corpus: splits of whole units, clear errors for bad corpora and configs, the cache folder, and the
data YAMLs composing into valid configs. Offline and fast."""

from __future__ import annotations

import itertools

import pytest

from harness.data import corpus
from harness.data.corpus import CorpusError, DataConfig, load_corpus, split_units
from harness.registry import RegistryError


def test_split_units_partitions_whole_units():
    units = [f"unit {i:03d}" for i in range(50)]
    train, validation, test = split_units(units, seed=0)
    parts = [p.split("\n\n") for p in (train, validation, test)]
    assert sorted(itertools.chain(*parts)) == units  # each unit exactly once
    assert [len(p) for p in parts] == [40, 5, 5]  # HELDOUT_FRACTION of 50 = 5
    assert all(p == sorted(p) for p in parts)  # original order kept inside a split
    assert split_units(units, seed=0) == (train, validation, test)
    assert split_units(units, seed=1) != (train, validation, test)
    assert [len(s) > 0 for s in split_units(units[:3], seed=0)] == [True] * 3
    with pytest.raises(ValueError, match="at least 3"):
        split_units(units[:2], seed=0)


def test_clear_errors_for_bad_corpora_and_configs(tmp_path):
    with pytest.raises(RegistryError, match="data.name.*Did you mean 'janeausten'"):
        DataConfig(name="janeaustin")
    with pytest.raises(ValueError, match="data.path is required"):
        DataConfig(name="jsonl")
    with pytest.raises(ValueError, match="data.split_by='volume'.*chapter"):
        DataConfig(split_by="volume")
    with pytest.raises(ValueError, match="data.block_size=0"):
        DataConfig(block_size=0)
    with pytest.raises(CorpusError, match="not a file"):
        load_corpus(DataConfig("text_file", path=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(DataConfig("text_file", path=str(tmp_path / "empty.txt")))
    (tmp_path / "latin1.txt").write_bytes("café\n\n".encode("latin-1") * 5)
    with pytest.raises(CorpusError, match="UTF-8"):
        load_corpus(DataConfig("text_file", path=str(tmp_path / "latin1.txt")))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(CorpusError, match="line 2 is not JSON"):
        load_corpus(DataConfig("jsonl", path=str(tmp_path / "bad.jsonl")))
    (tmp_path / "field.jsonl").write_text('{"body": "a"}\n')
    with pytest.raises(
        CorpusError, match=r"line 1 has no string field data.text_field='text' \(it has \['body'\]\)"
    ):
        load_corpus(DataConfig("jsonl", path=str(tmp_path / "field.jsonl")))


def test_cache_dir_defaults_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert DataConfig().cache_dir == str(tmp_path)


def test_yamls_compose_into_valid_configs(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from harness.config import EXPERIMENTS_DIR

    ConfigStore.instance().store(group="data", name="data_schema", node=DataConfig)
    yamls = sorted(p.stem for p in (EXPERIMENTS_DIR / "data").glob("*.yaml"))
    assert yamls == ["janeausten", "jsonl", "text_file", "wikitext2"]
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        for name in yamls:
            (tmp_path / "corpus").write_text("text")  # file corpora check that data.path is a file
            cfg = corpus.data_config(compose(overrides=[f"+data={name}", f"++data.path={tmp_path / 'corpus'}"]).data)
            assert cfg.name == name and cfg.block_size == DataConfig.block_size
        with pytest.raises(ValueError, match="data.path is required"):
            corpus.data_config(compose(overrides=["+data=text_file"]).data)
    assert DataConfig().name == "janeausten"  # the default corpus
