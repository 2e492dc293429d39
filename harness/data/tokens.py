"""Text -> token ids -> packed training blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from harness.data.corpus import SPLITS, Corpus, CorpusError, DataConfig, load_corpus

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


def pack_split(corpus: Corpus, split: str, tokenizer: Any, block_size: int, field: str) -> torch.Tensor:
    """One split of a loaded corpus, tokenised and packed into blocks of `block_size` tokens; too short for one
    block, a CorpusError naming the split's length in tokens and `field`, the knob that asked for the length."""
    ids = tokenize(getattr(corpus, split), tokenizer)
    if ids.numel() < block_size:
        raise CorpusError(f"corpus {corpus.name!r}: the {split} split is {ids.numel():,} tokens, fewer than one "
                          f"block of {field}={block_size}; lower {field} to at most {ids.numel():,} or give more text")
    return pack(ids, block_size)


def token_blocks(cfg: DataConfig, tokenizer: Any, split: str = "train") -> torch.Tensor:
    """One split of cfg's corpus, tokenised and packed: LongTensor (n_blocks, cfg.block_size)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    return pack(tokenize(getattr(load_corpus(cfg), split), tokenizer), cfg.block_size)
