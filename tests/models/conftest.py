"""Helpers shared by the models' tests (and the storage tests): tiny models built from configs (random Llama/OPT, no
files, no network), quantizer configs computing in fp32, logits."""

import torch

from harness.models.sources import ModelConfig, load_model
from harness.registry import QUANTIZERS

TEXT = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times."


def tiny(arch: str, **fields):
    return load_model(ModelConfig(name=f"tiny-{arch}", source="tiny", arch=arch, **fields))


def quantizer(name: str, **fields):
    return QUANTIZERS.get(name)(compute_dtype=fields.pop("compute_dtype", "float32"), **fields)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()
