"""harness.sensitivity.config: the shipped config composes with the default knobs."""

from __future__ import annotations

from harness.sensitivity.config import SensitivityConfig
from tests.sensitivity.conftest import compose_sensitivity


def test_shipped_config_composes_with_the_default_knobs():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose_sensitivity([]))
    assert isinstance(cfg, SensitivityConfig)
    assert cfg.granularity == "coarse" and cfg.top_k == [1, 2, 4] and cfg.quantizer.name == "nf4"
    assert cfg.keep_8bit.name == "int8" and cfg.output_dir == "results/sensitivity/smollm2-135m"
