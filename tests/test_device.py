"""harness.device: compute_dtype=auto never picks a dtype the CPU only emulates; an explicit dtype wins."""

import pytest
import torch

from harness import device as harness_device


@pytest.mark.parametrize("flags, expected", [({"avx512_bf16", "avx512f"}, "bfloat16"), ({"amx_bf16"}, "bfloat16"),
                                             ({"avx2", "fma"}, "float32"), (set(), "float32")])
def test_compute_dtype_auto_never_picks_an_emulated_dtype_on_the_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(harness_device, "cpu_flags", lambda: flags)
    assert harness_device.resolve_compute_dtype("auto", torch.device("cpu")) == expected
    assert harness_device.resolve_compute_dtype("float16", torch.device("cpu")) == "float16"  # explicit wins
