"""Helpers shared by the training tests: a small corpus on disk and a TrainConfig on the tiny Llama."""

import pytest
import torch

from harness.training.config import TrainConfig, TrainSettings

TINY = {"name": "tiny-llama", "source": "tiny", "arch": "llama"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A small corpus on disk: 60 paragraphs of varied sentences (the byte tokenizer makes ~30K tokens)."""
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees".split()
    gen = torch.Generator().manual_seed(0)
    paragraphs = [" ".join(words[i] for i in torch.randint(0, len(words), (90,), generator=gen).tolist()) + "."
                  for _ in range(60)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return str(path)


def config(text_file, tmp_path, quantizer=None, adapter=None, module="auto", **train):
    settings = {"steps": 4, "batch_size": 2, "seq_len": 32, "eval_tokens": 256, "eval_context": 64,
                "lr": 1e-2, "progress": False, **train}
    return TrainConfig(model=TINY, data={"name": "text_file", "path": text_file},
                       quantizer=quantizer or {"name": "nf4", "block_size": 64},
                       adapter=adapter or {"name": "lora", "rank": 4, "targets": ["all-linear"]},
                       train=TrainSettings(**settings), module=module, device="cpu", compute_dtype="float32",
                       output_dir=str(tmp_path / "run"))
