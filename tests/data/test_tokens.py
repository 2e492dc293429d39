"""harness.data.tokens: tokenise in chunks (the same ids as the whole text, without the length warning) and pack
into blocks, on a byte-level BPE tokenizer trained in-process."""

from __future__ import annotations

import pytest
import torch

from harness.data import tokens
from harness.data.corpus import DataConfig, load_corpus
from harness.data.tokens import pack, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained in-process (like SmolLM2's / GPT-2's), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([SAMPLE] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", model_max_length=64)


SAMPLE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife.\n\nHowever little known the feelings or views of such a man may be.\n\n\n  Indented, after three "
    "newlines.\n\n“Quoted,” said she; “naïve.”\n\n"
)


def test_tokenize_in_chunks_matches_the_whole_text_without_warning(tokenizer):
    text = SAMPLE * 20  # ~100 tokens per copy: far beyond model_max_length=64
    key = "sequence-length-is-longer-than-the-specified-maximum"
    ids = tokenize(text, tokenizer, chunk_chars=80)
    assert key not in tokenizer.deprecation_warnings  # tokenize never tripped the length warning ...
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert key in tokenizer.deprecation_warnings  # ... which one call on the whole text does
    assert ids.dtype == torch.long and ids.shape == (len(whole),) and ids.tolist() == whole
    assert tokenizer.decode(ids) == text
    for n in (1, 80, 10_000):
        assert "".join(tokens._chunks(text, n)) == text
    with_bos = tokenize(text, tokenizer, add_bos=True)
    assert with_bos[0] == tokenizer.bos_token_id and torch.equal(with_bos[1:], ids)
    assert tokenize("", tokenizer).shape == (0,)


def test_pack_drops_the_remainder():
    ids = torch.arange(10)
    blocks = pack(ids, 4)
    assert blocks.shape == (2, 4) and torch.equal(blocks.flatten(), ids[:8])
    assert pack(ids, 10).shape == (1, 10) and pack(ids, 1).shape == (10, 1)
    with pytest.raises(ValueError, match="10 tokens make no block of block_size=11"):
        pack(ids, 11)
    with pytest.raises(ValueError, match=r"shape \(n_tokens,\)"):
        pack(ids.view(2, 5), 2)


def test_token_blocks_end_to_end(tmp_path, tokenizer):
    path = tmp_path / "t.txt"
    path.write_text(SAMPLE * 10)
    cfg = DataConfig("text_file", path=str(path), block_size=16)
    blocks = tokens.token_blocks(cfg, tokenizer, "train")
    expected = tokenize(load_corpus(cfg).train, tokenizer)
    assert blocks.shape == (expected.numel() // 16, 16) and torch.equal(
        blocks.flatten(), expected[: blocks.numel()]
    )
