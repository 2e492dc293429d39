"""What every adapter shares: the config schema, compatibility checks, attach, merge/unmerge, save and load.

An adapter is a config dataclass registered in ADAPTERS (one folder under adapters/). It turns itself into a
PEFT config (`peft_config`), so attaching, training and saving go through PEFT and its save format
(adapter_config.json + adapter_model.safetensors). What PEFT does not do, the harness does here:
  - one compatibility check from the configs alone, before any model is loaded (`check_base`);
  - merge / unmerge on every base layer kind through quantizers.layers (QLoRA-style re-quantization, and
    exact unmerge from a snapshot), with per-adapter overrides (QA-LoRA folds into the zero points);
  - hooks into the training loop (`on_step`: AdaLoRA's budget schedule) and a report of the final ranks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from quantizers import layers

# targets presets; anything else is a list of module names (PEFT matches them as name suffixes)
ALL_LINEAR = "all-linear"  # every linear layer but the output head (QLoRA's choice)
ATTENTION = "attention"  # every linear layer inside an attention block (names containing attn/attention)
INITS = ("default", "gaussian", "loftq")


class IncompatibleError(ValueError):
    """An adapter that cannot run on the chosen quantizer / layer kind. Raised before any work."""


@dataclass
class AdapterConfig:
    """Knobs every adapter has. Subclasses add their own and validate them in __post_init__.

    rank: r of the low-rank factors (AdaLoRA: the target average rank; its start rank is init_r).
    alpha: the update is scaled by alpha / r (alpha / sqrt(r) with rslora).
    targets: [all-linear], [attention], or module names such as [q_proj, v_proj].
    """

    name: str = "?"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    rslora: bool = False
    init: str = "default"

    # base layer kinds the adapter can sit on (quantizers.layers.KINDS)
    layer_kinds: ClassVar[tuple[str, ...]] = layers.KINDS
    inits: ClassVar[tuple[str, ...]] = ("default",)
    has_rslora: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"{self.name}.rank={self.rank!r} is not accepted; use a positive integer (e.g. 8)")
        if self.alpha <= 0:
            raise ValueError(f"{self.name}.alpha={self.alpha!r} is not accepted; use a positive number (e.g. 16)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{self.name}.dropout={self.dropout!r} is not accepted; use a value in [0, 1)")
        if not self.targets or isinstance(self.targets, str):
            raise ValueError(
                f"{self.name}.targets={self.targets!r} is not accepted; use a list: [{ALL_LINEAR}], [{ATTENTION}] "
                "or module names such as [q_proj, v_proj]"
            )
        self.targets = list(self.targets)
        if self.rslora and not self.has_rslora:
            raise ValueError(f"{self.name}.rslora=true is not available for {self.name} (PEFT scales it by "
                             "alpha / r only); set rslora=false")
        if self.init not in self.inits:
            raise ValueError(f"{self.name}.init={self.init!r} is not accepted for {self.name}; use one of "
                             f"{list(self.inits)}")

    # ------------------------------------------------------------ what subclasses implement

    def peft_config(self, model: nn.Module, total_steps: int, base: dict):
        """The PEFT config for `model`. base: what check_base learnt about the quantized base."""
        raise NotImplementedError

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.rslora else self.rank)

    def check_base(self, quantizer_config, layer_kind: str) -> dict:
        """Raise IncompatibleError if this adapter cannot sit on `layer_kind` layers holding `quantizer_config`
        (None: no quantization). Returns facts the adapter needs later (e.g. QA-LoRA's group size)."""
        if layer_kind not in self.layer_kinds:
            raise IncompatibleError(
                f"adapter {self.name} cannot sit on {layer_kind} layers; it accepts {list(self.layer_kinds)}"
                + (" (use module=harness: the same codes, on the harness' QuantLinear)" if "harness" in
                   self.layer_kinds else "")
            )
        return {}

    def check_steps(self, total_steps: int) -> None:
        """Raise if the adapter cannot train for `total_steps` steps (AdaLoRA's schedule must fit)."""

    def after_attach(self, model, base_weights: dict[str, torch.Tensor] | None) -> None:
        """Called once the PEFT model exists (LoftQ initialisation uses the full-precision weights)."""

    def on_step(self, model, step: int) -> None:
        """Called after every optimizer step (AdaLoRA reallocates its rank budget here)."""

    def merge_layer(self, layer, adapter_name: str) -> None:
        """Add the adapter's update into the base layer's weight (re-quantized as that weight is)."""
        base = layer.get_base_layer()
        delta = layer.get_delta_weight(adapter_name).float()
        layers.set_weight(base, layers.dequantized_weight(base) + delta)

    def report(self, model) -> dict[str, Any]:
        """Extra facts to record after training (AdaLoRA: the final rank of every layer)."""
        return {}


# ---------------------------------------------------------------- attaching


def resolve_targets(targets: list[str]) -> str | list[str]:
    """The PEFT target_modules for our targets list."""
    if targets == [ALL_LINEAR]:
        return ALL_LINEAR
    if targets == [ATTENTION]:
        return r".*(attn|attention)\..*"  # a string is a regex PEFT matches against the full name
    if ALL_LINEAR in targets or ATTENTION in targets:
        raise ValueError(f"targets={targets}: {ALL_LINEAR} and {ATTENTION} stand alone, not inside a list")
    return targets


# the module classes the adapters wrap (PEFT's LoRA family dispatches on these; transformers' Conv1D is GPT-2's)
WRAPPABLE = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D")


class TargetError(ValueError):
    """adapter.targets names modules the model has not got (or cannot be wrapped); the message lists what it has."""


def check_targets(cfg: AdapterConfig, modules: dict[str, str], model_name: str) -> None:
    """Raise TargetError unless every entry of cfg.targets matches a module an adapter can wrap, as PEFT will
    match it (a name equal to the module's full name or to its last dotted parts; the groups as resolve_targets
    makes them). modules: {full name: class name}, e.g. from the model's meta-device skeleton."""
    linear = [n for n, kind in modules.items() if kind in ("Linear", "Conv1D")]
    names = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linear))
    accepted = (f"accepted: the linear modules of {model_name!r}: {names}; or the groups [{ATTENTION}], "
                f"[{ALL_LINEAR}]")
    shown = "[" + ", ".join(cfg.targets) + "]"
    target = resolve_targets(cfg.targets)
    if target == ALL_LINEAR:
        if not linear:
            raise TargetError(f"adapter.targets={shown}: model {model_name!r} has no linear layers")
        return
    if isinstance(target, str):  # the attention group: a regex over full names
        import re

        if not any(re.fullmatch(target, n) for n in linear):
            raise TargetError(f"adapter.targets={shown}: no linear module of {model_name!r} sits in an attention "
                              f"block (none has attn or attention in its name); {accepted}")
        return
    missing, unwrappable = [], []
    for t in target:
        found = [n for n in modules if n == t or n.endswith("." + t)]
        if not found:
            missing.append(t)
        elif not any(modules[n] in WRAPPABLE for n in found):
            unwrappable.append(f"{t} is a {modules[found[0]]}")
    if missing:
        raise TargetError(f"adapter.targets={shown}: {', '.join(missing)} "
                          f"{'matches' if len(missing) == 1 else 'match'} no module of {model_name!r}; {accepted}")
    if unwrappable:
        raise TargetError(f"adapter.targets={shown}: {'; '.join(unwrappable)}, not a layer an adapter can wrap "
                          f"(a linear, embedding or convolution layer); {accepted}")


def attach(model: nn.Module, cfg: AdapterConfig, total_steps: int = 1000, base: dict | None = None,
           base_weights: dict[str, torch.Tensor] | None = None):
    """Wrap `model` (already quantized) with the adapter -> a PeftModel whose only trainable parameters are
    the adapter's. base: what cfg.check_base returned (call it before loading anything: it is the
    compatibility check). base_weights: full-precision weights of the target layers, for inits that need them."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias while wrapping: a warning
        # about PEFT's code, printed on every attach, that no setting of ours can avoid
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        try:
            peft_model = get_peft_model(model, cfg.peft_config(model, total_steps, base or {}))
        except ValueError as err:  # PEFT's target matching (NoMatchingPeftModuleError, an unsupported module type)
            if "target" not in str(err).lower():
                raise
            modules = {n: "Linear" if isinstance(m, nn.Linear) else type(m).__name__  # bnb's and ours are Linears
                       for n, m in model.named_modules() if n}
            check_targets(cfg, modules, getattr(model.config, "name_or_path", "") or type(model).__name__)
            raise TargetError(f"adapter.targets=[{', '.join(cfg.targets)}]: PEFT refused them "
                              f"({' '.join(str(err).split())})") from err
    cfg.after_attach(peft_model, base_weights)
    return peft_model


def tuner_layers(model) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameters(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- merging


def merge(model, cfg: AdapterConfig) -> int:
    """Merge every active adapter into its base layer (in place). Returns the number of layers merged."""
    count = 0
    for _, layer in tuner_layers(model):
        for name in layer.active_adapters:
            if name in layer.merged_adapters:
                continue
            handle = layers.snapshot(layer.get_base_layer())
            cfg.merge_layer(layer, name)
            layer.merged_adapters.append(name)  # PEFT's forward now runs the base layer alone
            layer.__dict__.setdefault("_harness_snapshots", []).append(handle)
            count += 1
    return count


def unmerge(model) -> int:
    """Undo merge(): restore every base layer's exact pre-merge storage."""
    count = 0
    for _, layer in tuner_layers(model):
        snapshots = layer.__dict__.get("_harness_snapshots", [])
        while layer.merged_adapters:
            layer.merged_adapters.pop()
            layers.restore(layer.get_base_layer(), snapshots.pop())
            count += 1
    return count


def merge_and_unload(model, cfg: AdapterConfig) -> nn.Module:
    """Merge, then drop the adapter layers: the plain (quantized) model, as PEFT's merge_and_unload gives."""
    merge(model, cfg)
    for _, layer in tuner_layers(model):
        layer.__dict__.pop("_harness_snapshots", None)  # nothing can unmerge once the adapters are gone
    return model.unload()


# ---------------------------------------------------------------- saving and loading


def save(model, directory: str | Path, cfg: AdapterConfig) -> Path:
    """PEFT's format: adapter_config.json + adapter_model.safetensors, plus harness_adapter.json (our config,
    so load() can rebuild what PEFT's config cannot express, e.g. QA-LoRA's custom layer)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    from dataclasses import asdict

    (directory / "harness_adapter.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return directory


def load(model: nn.Module, directory: str | Path, cfg: AdapterConfig, base: dict | None = None):
    """Attach `cfg` to `model` (quantized as when it was saved) and load the saved adapter weights."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = attach(model, cfg, base=base)
    state = load_file(str(Path(directory) / "adapter_model.safetensors"))
    saved = json.loads((Path(directory) / "adapter_config.json").read_text())
    if saved.get("peft_type") == "ADALORA" and saved.get("rank_pattern"):
        state = _adalora_full_rank(state, saved["rank_pattern"])
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{directory}: saved tensors the adapter does not have: {result.unexpected_keys[:5]}")
    return peft_model


def _adalora_full_rank(state: dict[str, torch.Tensor], rank_pattern: dict[str, list[bool]]) -> dict:
    """PEFT saves a trained AdaLoRA cut to the ranks its budget kept (rank_pattern: {module.lora_E: kept?}),
    while attach() builds every layer at init_r. Put each saved rank back in its place and the dropped ones at
    zero: their singular values were masked to zero, so they added nothing, and the loaded model computes
    exactly what the trained one did (PEFT's own loader instead shrinks the layers, which changes the
    summation order of the low-rank products)."""
    for key, kept in rank_pattern.items():
        index = torch.tensor(kept, dtype=torch.bool).nonzero().view(-1)
        prefix = "base_model.model." + key.removesuffix(".lora_E")
        for part, dim in (("lora_E", 0), ("lora_A", 0), ("lora_B", 1)):
            saved = state[f"{prefix}.{part}"]
            if saved.shape[dim] == len(kept):  # every rank kept: PEFT saved it whole
                continue
            shape = list(saved.shape)
            shape[dim] = len(kept)
            state[f"{prefix}.{part}"] = saved.new_zeros(shape).index_copy_(dim, index, saved)
    return state
