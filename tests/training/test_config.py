"""harness.training.config: bad values name the field."""

import pytest

from harness.training.config import TrainConfig, TrainSettings


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match=r"train\.steps=-1"):
        TrainSettings(steps=-1)
    with pytest.raises(ValueError, match=r"train\.optimizer='sgd'.*adamw"):
        TrainSettings(optimizer="sgd")
    with pytest.raises(ValueError, match=r"device='gpu'"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match=r"compute_dtype='fp8'"):
        TrainConfig(compute_dtype="fp8")
