"""What is known of a model before any of its weights load: its transformers config, its skeleton on the meta
device (shapes only, no memory), and the names and kinds of its modules. The memory predictor sizes models from
these; training checks adapter targets against them; both work for a 65B model on a laptop.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from harness.models.sources import EMBEDDED_MODELS, ModelConfig, embedded_gguf_path, load_gguf, tiny_hf_config


def hf_config(cfg: ModelConfig):
    """The transformers config of a model, without loading its weights (for meta-device models)."""
    from transformers import AutoConfig

    if cfg.architecture:
        fields = dict(cfg.architecture)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    if cfg.source == "tiny":
        return tiny_hf_config(cfg)
    if cfg.source == "embedded":
        spec = EMBEDDED_MODELS[cfg.name]
        folder = cfg.cache_root / "models" / spec.folder
        if not (folder / "config.json").exists():
            load_gguf(embedded_gguf_path(spec), folder, cfg.torch_dtype)  # converts once
        return AutoConfig.from_pretrained(folder)
    source = str(Path(cfg.path).expanduser()) if cfg.source == "local" else cfg.hub_id
    try:
        return AutoConfig.from_pretrained(source, revision=cfg.revision if cfg.source == "hub" else None)
    except OSError as e:
        raise OSError(f"could not read the config of {source!r} ({e}); without the hub, give the architecture "
                      "in the model YAML (model.architecture: model_type and its fields)") from e


def meta_model(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16, vocab_size: int | None = None) -> nn.Module:
    """The model of `cfg` on the meta device (shapes only, no memory); vocab_size resizes the vocabulary (tokens
    added for fine-tuning)."""
    from transformers import AutoModelForCausalLM

    config = hf_config(cfg)
    if vocab_size:
        config.vocab_size = vocab_size
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def check_available(cfg: ModelConfig) -> None:
    """Raise (naming the field) when loading the model cannot work: a hub model neither in the Hugging Face cache
    nor reachable (transformers would retry ~25 s before saying so), a local folder whose config transformers
    cannot read. Before any weight loads."""
    from harness.hub import offline_reason

    if cfg.source == "hub":
        from huggingface_hub import try_to_load_from_cache

        reason = offline_reason()
        if reason and not isinstance(try_to_load_from_cache(cfg.hub_id, "config.json", revision=cfg.revision), str):
            raise ValueError(f"model.hub_id={cfg.hub_id!r} is not in the Hugging Face cache and the hub cannot be "
                             f"reached ({reason}); without internet use model=smollm2-135m (embedded, offline) or "
                             "model.source=local model.path=<folder> (the memory command needs only the config: "
                             "model.architecture in the model YAML)")
    if cfg.source == "local" and Path(cfg.path).expanduser().is_dir():
        module_kinds(cfg)  # reads its config.json as transformers will


def module_kinds(cfg: ModelConfig) -> dict[str, str]:
    """{module name: class name} of the model, read from its meta-device skeleton before any weight loads: what
    adapter targets are checked against. A config transformers cannot build a model from is a ValueError naming
    the field. Kept per process for the last few models: a sweep plans every cell of one model."""
    key = json.dumps({k: v for k, v in vars(cfg).items() if k != "cache_dir"}, sort_keys=True, default=str)
    if key not in _KINDS:
        if len(_KINDS) >= 8:
            _KINDS.clear()
        _KINDS[key] = _module_kinds(cfg)
    return _KINDS[key]


_KINDS: dict[str, dict[str, str]] = {}


def _module_kinds(cfg: ModelConfig) -> dict[str, str]:
    try:
        model = meta_model(cfg, torch.float32)
    except (OSError, ValueError, KeyError) as err:
        where = f"model.path={cfg.path!r}" if cfg.source == "local" else f"model.hub_id={cfg.hub_id!r}"
        raise ValueError(f"{where}: transformers could not build the model from its config "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
    return {name: type(module).__name__ for name, module in model.named_modules() if name}
