"""Configs: every shipped YAML composes through Hydra and validates; bad values fail naming the field,
the value and what is accepted."""

import dataclasses
import enum
import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from harness import config as harness_config
from harness.cli import register_configs
from harness.registry import ADAPTERS, QUANTIZERS
from harness.weight_errors.config import ErrorsConfig
from quantizers.base import QuantizerConfig

QUANTIZER_YAMLS = sorted((harness_config.EXPERIMENTS_DIR / "quantizer").glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra():
    register_configs()
    with initialize_config_dir(config_dir=str(harness_config.EXPERIMENTS_DIR), version_base=None):
        yield


def plain(value):
    if dataclasses.is_dataclass(value):  # a nested schema (a calibrated quantizer's calibration set)
        return dataclasses.asdict(value)
    return value.value if isinstance(value, enum.Enum) else value


def test_there_are_quantizer_yamls():
    assert len(QUANTIZER_YAMLS) >= len(QUANTIZERS)


@pytest.mark.parametrize("path", QUANTIZER_YAMLS, ids=lambda p: p.stem)
def test_every_quantizer_yaml_composes_and_validates(hydra, path):
    cfg = compose("errors", overrides=[f"+quantizer@quantizers.x={path.stem}"])
    config = harness_config.quantizer_config(cfg.quantizers.x)
    assert isinstance(config, QuantizerConfig)
    # every value the YAML sets arrives in the dataclass (none dropped or renamed by the schema)
    written = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k != "defaults"}
    assert {k: plain(getattr(config, k)) for k in written} == written
    assert config.build().name == config.name


def test_every_registered_quantizer_has_a_yaml():
    named = {OmegaConf.load(p).name for p in QUANTIZER_YAMLS}
    assert set(QUANTIZERS.names()) <= named


def test_errors_yaml_composes_and_validates(hydra):
    errors = OmegaConf.to_object(compose("errors"))  # runs every dataclass's __post_init__
    assert isinstance(errors, ErrorsConfig)
    assert errors.quantizers and all(isinstance(q, QuantizerConfig) for q in errors.quantizers.values())
    for label, node in compose("errors").quantizers.items():  # and the path the CLI takes
        assert harness_config.quantizer_config(node) == errors.quantizers[label]


def test_the_override_documented_in_errors_yaml_works(hydra):
    overrides = ["+quantizer@quantizers.nf4_b128=nf4", "quantizers.nf4_b128.block_size=128"]
    cfg = compose("errors", overrides=overrides)
    config = harness_config.quantizer_config(cfg.quantizers.nf4_b128)
    assert (config.name, config.block_size) == ("nf4", 128)


def test_a_bad_value_in_a_composed_config_names_the_field(hydra):
    cfg = compose("errors", overrides=["quantizers.nf4.block_size=48"])
    with pytest.raises(ValueError, match=r"nf4\.block_size=48 is not accepted; use a power of two from 32"):
        harness_config.quantizer_config(cfg.quantizers.nf4)
    with pytest.raises(ValueError, match=r"nf4\.block_size=48"):
        OmegaConf.to_object(cfg)


def test_hydra_type_checks_against_the_schema(hydra):
    with pytest.raises(Exception, match="block_size"):  # Hydra wraps omegaconf's ValidationError
        compose("errors", overrides=["quantizers.nf4.block_size=big"])


# (node, the error's type, a pattern naming the field, the value and what is accepted)
INVALID = [
    ({"name": "nf4", "block_size": 48}, ValueError, r"nf4\.block_size=48 .*power of two from 32 to 4096"),
    ({"name": "nf4", "block_size": 8192}, ValueError, r"nf4\.block_size=8192 .*power of two from 32 to 4096"),
    ({"name": "fp4", "block_size": 16}, ValueError, r"fp4\.block_size=16 .*power of two from 32 to 4096"),
    ({"name": "nf4", "dq_block_size": 100}, ValueError, r"nf4\.dq_block_size=100 .*power of two"),
    ({"name": "nf4", "compute_dtype": "float64"}, ValueError,
     r"nf4\.compute_dtype='float64' .*use auto or one of \['bfloat16', 'float16', 'float32'\]"),
    ({"name": "nf4", "backend": "cuda"}, ValidationError,
     r"(?s)'cuda'.*auto, reference, bitsandbytes.*backend"),
    ({"name": "fp4_e3m0", "backend": "bitsandbytes"}, ValueError,
     r"fp4_e3m0\.backend=bitsandbytes .*no fp4_e3m0 kernel; use backend=reference or backend=auto"),
    ({"name": "int4", "backend": "bitsandbytes"}, ValueError,
     r"int4\.backend=bitsandbytes .*backend=reference"),
    ({"name": "int8", "granularity": "column"}, ValidationError, r"(?s)'column'.*row, block.*granularity"),
    ({"name": "int8", "outlier_threshold": -1.0}, ValueError, r"int8\.outlier_threshold=-1\.0 must be >= 0"),
    ({"name": "int8", "outlier_threshold": float("nan")}, ValueError,
     r"int8\.outlier_threshold=nan must be >= 0"),
    ({"name": "int8", "granularity": "block", "outlier_threshold": 6.0}, ValueError,
     r"int8\.outlier_threshold=6\.0 needs granularity=row.*not granularity=block"),
    ({"name": "int8", "granularity": "block", "backend": "bitsandbytes"}, ValueError,
     r"int8\.backend=bitsandbytes supports granularity=row only, not granularity=block"),
    ({"name": "intk", "bits": 5}, ValueError, r"intk\.bits=5 is not accepted; use one of \(2, 3, 4, 8\)"),
    ({"name": "intk", "group_size": 33}, ValueError, r"intk\.group_size=33 .*power of two"),
    ({"name": "intk", "backend": "bitsandbytes"}, ValueError, r"intk\.backend=bitsandbytes .*use reference"),
    ({"name": "nf4", "blocksize": 64}, ConfigKeyError, r"Key 'blocksize' not in 'NF4Config'"),
    ({"name": "nf5"}, KeyError, r"unknown quantizer 'nf5'\. Did you mean 'nf4'\?"),
    # the list is the registry's own, whatever quantizers are registered
    ({"block_size": 64}, ValueError, "has no `name`; set name to one of " + re.escape(str(QUANTIZERS.names()))),
]


@pytest.mark.parametrize("node,error,pattern", INVALID, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_invalid_configs_name_the_field_the_value_and_what_is_accepted(node, error, pattern):
    with pytest.raises(error, match=pattern):
        harness_config.quantizer_config(node)


@pytest.mark.parametrize("node,error,pattern", [c for c in INVALID if c[1] is ValueError and "name" in c[0]],
                         ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_the_dataclasses_validate_without_hydra_too(node, error, pattern):
    fields = dict(node)
    with pytest.raises(error, match=pattern):
        QUANTIZERS.get(fields.pop("name"))(**fields)


# ---------------------------------------------------------------- adapters and train

ADAPTER_YAMLS = sorted((harness_config.EXPERIMENTS_DIR / "adapter").glob("*.yaml"))


def test_every_registered_adapter_has_a_yaml():
    assert {OmegaConf.load(p).name for p in ADAPTER_YAMLS} == set(ADAPTERS.names())


@pytest.mark.parametrize("path", ADAPTER_YAMLS, ids=lambda p: p.stem)
def test_every_adapter_yaml_composes_and_validates_inside_train(hydra, path):
    cfg = compose("train", overrides=[f"adapter={path.stem}"])
    config = harness_config.adapter_config(cfg.adapter)
    written = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k != "defaults"}
    assert {k: getattr(config, k) for k in written} == written


def test_train_yaml_composes_and_plans(hydra):
    from harness.training.config import TrainConfig
    from harness.training.plan import plan

    cfg = compose("train", overrides=["train.steps=7", "adapter.rank=4"])
    train = TrainConfig(model=cfg.model, data=cfg.data, quantizer=cfg.quantizer, adapter=cfg.adapter,
                        train=OmegaConf.to_object(cfg.train))
    p = plan(train)  # resolves device, dtype and the layer kind without loading anything
    assert (p.train.steps, p.adapter.rank, p.quantizer.name) == (7, 4, "nf4")
    assert str(p.output_dir) == "results/train/smollm2-135m/nf4-lora-r4"


INVALID_ADAPTERS = [
    ({"name": "lora", "rank": 0}, r"lora\.rank=0 is not accepted; use a positive integer"),
    ({"name": "lora", "alpha": -1.0}, r"lora\.alpha=-1\.0 is not accepted"),
    ({"name": "lora", "dropout": 1.0}, r"lora\.dropout=1\.0 is not accepted; use a value in \[0, 1\)"),
    ({"name": "lora", "init": "pissa"}, r"lora\.init='pissa' is not accepted for lora; use one of \['default'"),
    ({"name": "loha", "init": "loftq"}, r"loha\.init='loftq' is not accepted for loha; use one of \['default'\]"),
    ({"name": "lokr", "rslora": True}, r"lokr\.rslora=true is not available"),
    ({"name": "adalora", "rank": 8, "init_r": 4}, r"adalora\.init_r=4 must be an integer >= adalora\.rank=8"),
    ({"name": "lora", "targets": []}, r"lora\.targets=\[\] is not accepted; use a list"),
    ({"name": "lorra"}, r"unknown adapter 'lorra'\. Did you mean 'lora'\?"),
]


@pytest.mark.parametrize("node,pattern", INVALID_ADAPTERS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_invalid_adapter_configs_name_the_field_the_value_and_what_is_accepted(node, pattern):
    with pytest.raises((ValueError, KeyError), match=pattern):
        harness_config.adapter_config(node)
