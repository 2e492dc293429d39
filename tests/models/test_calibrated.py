"""harness.models.calibrated: a calibrated base read back from the cache is the model a fresh calibration makes
(codes, folded parameters, logits), without calibrating again; the cache key follows what decides the content."""

from dataclasses import replace

import pytest
import torch

from harness.models.calibrated import calibrated_base_path
from harness.models.quantize import quantize_model
from quantizers import packing
from tests.models.conftest import TEXT, logits, quantizer, tiny


def batches(tokenizer):
    ids = torch.tensor(tokenizer(TEXT * 8)["input_ids"])
    return list(ids[: 4 * 48].view(4, 48).split(2))


def codes(model, name):
    qt = model.get_submodule(name).quantized
    return packing.unpack(qt.qdata, qt.bits, qt.numel)


@pytest.mark.parametrize("name", ["gptq", "awq"])
def test_a_cached_base_is_the_calibrated_one_without_calibrating(name, tmp_path, monkeypatch):
    cfg = quantizer(name, bits=3, group_size=32)
    path = tmp_path / "base.pt"
    fresh, tokenizer = tiny("llama")
    cal = batches(tokenizer)
    first = quantize_model(fresh, cfg, module="harness", calibration=cal, cache=path)
    assert path.exists() and not first.calibration_cached

    # a second model reads it: no calibration runs (it would raise), the codes and (AWQ: the folded norms) agree
    monkeypatch.setattr(type(cfg), "calibrate", lambda *a, **k: pytest.fail("calibrated again"))
    again, _ = tiny("llama")
    second = quantize_model(again, cfg, module="harness", calibration=cal, cache=path)
    assert second.calibration_cached
    assert (second.quantize_seconds, second.calibration_peak_bytes) == (first.quantize_seconds,
                                                                         first.calibration_peak_bytes)
    for layer in first.layers:
        assert torch.equal(codes(again, layer.name), codes(fresh, layer.name)), layer.name
    assert [r.output_error for r in second.layers] == [r.output_error for r in first.layers]
    ids = cal[0]
    assert torch.equal(logits(again, ids), logits(fresh, ids))  # AWQ: only true with its folded scales restored
    if name == "awq":  # the check above can fail: AWQ changed parameters outside the quantized weights
        plain, _ = tiny("llama")
        assert not torch.equal(plain.model.layers[0].input_layernorm.weight,
                               again.model.layers[0].input_layernorm.weight)


def test_the_cache_key_follows_what_decides_the_calibrated_base(tmp_path):
    from harness.models.sources import ModelConfig

    model = ModelConfig(name="tiny-llama", source="tiny", arch="llama")
    cfg = quantizer("gptq", bits=3, group_size=32)
    data = {"name": "janeausten", "cache_dir": "/somewhere"}
    key = calibrated_base_path(model, cfg, "harness", data, torch.device("cpu"), tmp_path)
    assert key.parent == tmp_path / "calibrated"
    same = [
        calibrated_base_path(model, replace(cfg, compute_dtype="bfloat16"), "harness", data, "cpu", tmp_path),
        calibrated_base_path(model, cfg, "harness", {**data, "cache_dir": "/elsewhere"}, "cpu", tmp_path),
    ]
    assert all(path == key for path in same)
    different = [
        calibrated_base_path(model, replace(cfg, bits=4), "harness", data, "cpu", tmp_path),
        calibrated_base_path(model, replace(cfg, calibration=replace(cfg.calibration, samples=64)), "harness",
                             data, "cpu", tmp_path),
        calibrated_base_path(model, replace(cfg, calibration=replace(cfg.calibration, seed=1)), "harness", data,
                             "cpu", tmp_path),
        calibrated_base_path(model, cfg, "harness", {"name": "wikitext2"}, "cpu", tmp_path),
        calibrated_base_path(replace(model, arch="opt", name="tiny-opt"), cfg, "harness", data, "cpu", tmp_path),
        calibrated_base_path(model, cfg, "harness", data, "cuda", tmp_path),
    ]
    assert len({key, *different}) == 1 + len(different)
