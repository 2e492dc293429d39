"""The calibration set of a calibrated quantizer (GPTQ, AWQ): `samples` disjoint windows of `seq_len` tokens from
one split of the configured corpus, drawn with `seed`, as batches of token ids.

Disjoint (not GPTQ's reference's overlapping random windows) so that "128 x 512 tokens" means 65,536 distinct
tokens, and a corpus too short for that is an error rather than a calibration set that repeats itself.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.data.corpus import DataConfig, load_corpus
from harness.data.tokens import tokenize
from quantizers.calibration import CalibrationConfig

BATCH = 8  # sequences per forward: big enough for the matmuls, small enough for one layer's activations


def calibration_batches(data: DataConfig, tokenizer: Any, cal: CalibrationConfig) -> list[torch.Tensor]:
    """[LongTensor (<= BATCH, cal.seq_len)]: cal.samples windows in a seeded random order."""
    ids = tokenize(getattr(load_corpus(data), cal.split), tokenizer)
    return draw(ids, cal, where=f"the {cal.split} split of corpus {data.name!r}")


def draw(ids: torch.Tensor, cal: CalibrationConfig, where: str = "the corpus") -> list[torch.Tensor]:
    windows = ids.numel() // cal.seq_len
    if windows < cal.samples:
        raise ValueError(
            f"calibration.samples={cal.samples} x calibration.seq_len={cal.seq_len} needs "
            f"{cal.samples * cal.seq_len:,} tokens; {where} has {ids.numel():,} ({windows} windows of "
            f"{cal.seq_len}); lower calibration.samples or calibration.seq_len, or calibrate on a longer split")
    gen = torch.Generator().manual_seed(cal.seed)
    picked = torch.randperm(windows, generator=gen)[: cal.samples]
    blocks = ids[: windows * cal.seq_len].view(windows, cal.seq_len)[picked]
    return list(blocks.split(BATCH))


def check_calibration_split(quantizer_cfg: Any, evaluated: str, field: str) -> None:
    """A calibrated quantizer never sees the split the run evaluates (its base would have been fitted to it)."""
    cal = getattr(quantizer_cfg, "calibration", None)
    if cal is not None and cal.split == evaluated:
        raise ValueError(f"quantizer.calibration.split={cal.split!r} is the split this run evaluates "
                         f"({field}={evaluated!r}); calibrate on another split, e.g. train")
