"""Helpers shared by the adapters' tests: the tiny Llama base (quantized or not), the adapter configs, a few training
steps, logits, and copies of the stored tensors under each adapter.

Everything runs on a 2-layer, hidden-64 random Llama with batches of 2 x 16 tokens (a few seconds per test).
"""

from __future__ import annotations

import pytest
import torch

from adapters import base as adapters
from harness.config import quantizer_config
from harness.models.quantize import quantize_model
from harness.models.sources import ModelConfig, load_model
from harness.registry import ADAPTERS
from quantizers import layers as base_layer

MODEL = ModelConfig(name="tiny-llama", source="tiny", arch="llama")
EPS32 = torch.finfo(torch.float32).eps
STEPS, LR, RANK = 3, 1e-2, 4
QUANTIZERS = {  # compute in fp32 everywhere: merge/unmerge identities are then about storage, not bf16 rounding
    "int8": {"name": "int8"},
    "int4": {"name": "int4"},
    "fp4": {"name": "fp4"},
    "fp4_e3m0": {"name": "fp4_e3m0"},
    "nf4": {"name": "nf4"},
    "nf4_dq": {"name": "nf4", "double_quant": True},
    "int2_g32": {"name": "intk", "bits": 2, "group_size": 32},
    "int3_g32": {"name": "intk", "bits": 3, "group_size": 32},
    "int4_g32": {"name": "intk", "bits": 4, "group_size": 32},
    # intk's format by other methods: calibrated (on calibration_batches()) and optimised
    "gptq3_g32": {"name": "gptq", "bits": 3, "group_size": 32, "hessian_dtype": "float64"},
    "awq3_g32": {"name": "awq", "bits": 3, "group_size": 32},
    "hqq3_g32": {"name": "hqq", "bits": 3, "group_size": 32},
}
BNB_KIND = {"nf4": "bnb4", "fp4": "bnb4", "nf4_dq": "bnb4", "int8": "bnb8"}  # where bitsandbytes has the layer
MARKERS = {"lora": "lora_", "adalora": "lora_", "qalora": "lora_", "loha": "hada_", "lokr": "lokr_"}
ADAPTER_NAMES = ("lora", "loha", "lokr", "adalora", "qalora")


def qconfig(key: str | None):
    return None if key is None else quantizer_config({"compute_dtype": "float32", **QUANTIZERS[key]})


def adapter(name: str, **fields):
    defaults = {"rank": RANK, "alpha": 2.0 * RANK, "targets": ["all-linear"]}
    if name == "adalora":
        defaults["init_r"] = 6  # the budget falls from init_r towards `rank` over the steps
    return ADAPTERS.get(name)(**{**defaults, **fields})


def accepts(name: str, quantizer: str | None, kind: str) -> bool:
    cls = ADAPTERS.get(name)
    if name == "qalora":  # folds into zero points: intk's group-wise integer format only (intk, GPTQ, AWQ, HQQ)
        return quantizer is not None and getattr(qconfig(quantizer), "group_zero_points", False) and kind == "harness"
    return kind in cls.layer_kinds


def cells():
    out = []
    for name in ADAPTER_NAMES:
        for q in QUANTIZERS:
            for module, kind in (("harness", "harness"), ("bitsandbytes", BNB_KIND.get(q))):
                if kind is not None and accepts(name, q, kind):
                    out.append(pytest.param(name, q, module, kind, id=f"{name}-{q}-{kind}"))
    for name in ("lora", "loha"):  # a 16-bit (here fp32) base: plain nn.Linear layers
        out.append(pytest.param(name, None, None, "dense", id=f"{name}-none-dense"))
    return out


def base_model(quantizer: str | None, module: str | None):
    model, _ = load_model(MODEL)
    if quantizer is not None:
        quantize_model(model, qconfig(quantizer), module=module, calibration=calibration_batches())
    return model


def calibration_batches() -> list[torch.Tensor]:
    """What GPTQ and AWQ calibrate on (the others ignore it): four batches of random token ids, always the same."""
    return [batch(seed) for seed in range(100, 104)]


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 259, (2, 16), generator=torch.Generator().manual_seed(seed))


def train(model, cfg, ids: torch.Tensor, steps: int = STEPS) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    model.train()
    for step in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        cfg.on_step(model, step)  # AdaLoRA's budget: after the step, before zero_grad (as harness.training)
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def eval_loss(model, ids: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def storage(model) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the stored tensors (codes and constants; the dense weight for a dense base) of every layer
    an adapter sits on, by layer name."""
    return {name.removeprefix("base_model.model."): {k: v.detach().clone() for k, v in
                                                     base_layer.stored_tensors(layer.get_base_layer()).items()}
            for name, layer in adapters.tuner_layers(model)}


def same_storage(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def attached(name: str, quantizer: str | None, module: str | None, kind: str, total_steps: int = STEPS,
             **fields):
    cfg = adapter(name, **fields)
    base = cfg.check_base(qconfig(quantizer), kind)
    model = base_model(quantizer, module)
    torch.manual_seed(0)  # the adapter's initial weights
    return adapters.attach(model, cfg, total_steps=total_steps, base=base), cfg, base
