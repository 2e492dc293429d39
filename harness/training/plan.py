"""The plan of a run, decided from configs alone before any weight is loaded, and the pieces that build the
model from it: load -> quantize -> attach the adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from adapters import base as adapters
from harness.config import adapter_config, quantizer_config, quantizer_label, validated
from harness.data.calibration import calibration_batches, check_calibration_split
from harness.device import resolve_compute_dtype, resolve_device
from harness.training.config import TrainConfig, TrainSettings


@dataclass
class Plan:
    """Everything decided before any weight is loaded."""

    model: Any  # ModelConfig
    data: Any  # DataConfig
    quantizer: Any  # QuantizerConfig with the resolved compute dtype
    adapter: adapters.AdapterConfig
    train: TrainSettings
    device: torch.device
    compute_dtype: str
    module: str  # resolved: harness | bitsandbytes | none
    layer_kind: str  # harness | bnb4 | bnb8 | dense
    base: dict  # what the adapter's check_base returned
    output_dir: Path
    tasks: Any = None  # train.tasks resolved (harness.evaluation.tasks.TaskSet), None without tasks


def resolve_layer(module: str, qcfg, acfg: adapters.AdapterConfig) -> tuple[str, str]:
    """(module, layer kind) for a quantizer and an adapter: bitsandbytes' layers where `auto` may use them and
    the adapter accepts them, the harness' QuantLinear otherwise."""
    from quantizers.bnb_layers import bnb_kind

    if qcfg.name == "none":
        return "none", "dense"
    kind = bnb_kind(qcfg)
    bnb_layer = {"4bit": "bnb4", "8bit": "bnb8"}.get(kind)
    if module == "bitsandbytes":
        if bnb_layer is None:
            raise adapters.IncompatibleError(
                f"module=bitsandbytes has no layer for quantizer {qcfg.name} as configured; bitsandbytes has "
                "nf4/fp4 (Linear4bit) and int8 row-wise without outlier_threshold (Linear8bitLt); use module=harness")
        return "bitsandbytes", bnb_layer
    if module == "auto" and bnb_layer in acfg.layer_kinds:
        return "bitsandbytes", bnb_layer
    return "harness", "harness"


def plan(cfg: TrainConfig) -> Plan:
    """Validate and resolve everything; raises (naming the field) before any work."""
    from harness.data.corpus import data_config
    from harness.models.sources import check_context_length, model_config

    model, data = model_config(cfg.model), data_config(cfg.data)
    settings = cfg.train if isinstance(cfg.train, TrainSettings) else validated(TrainSettings, cfg.train)
    acfg = adapter_config(cfg.adapter)
    device = resolve_device(cfg.device)
    qcfg = quantizer_config(cfg.quantizer if cfg.quantizer is not None else {"name": "none"})
    # an explicit quantizer.compute_dtype wins (a paper config may pin fp32); auto takes the run's
    dtype = qcfg.compute_dtype if qcfg.compute_dtype != "auto" else resolve_compute_dtype(cfg.compute_dtype, device)
    qcfg.compute_dtype = dtype
    module, kind = resolve_layer(cfg.module, qcfg, acfg)
    base = acfg.check_base(None if qcfg.name == "none" else qcfg, kind)
    acfg.check_steps(settings.steps)
    from harness.models.skeleton import check_available, module_kinds

    check_available(model)  # a local folder with a readable config, a hub id cached or reachable
    if settings.steps:  # targets no module of the model: said now, from its skeleton, not by PEFT after loading
        adapters.check_targets(acfg, module_kinds(model), model.name)
    check_calibration_split(qcfg, settings.eval_split, "train.eval_split")
    tasks = None
    if settings.tasks:  # an unknown task or a dataset that cannot be had stops here, before the model is loaded
        from harness.evaluation.tasks import resolve_tasks

        tasks = resolve_tasks(settings.tasks, settings.task_datasets, settings.num_fewshot, prefix="train.")
    check_context_length(settings.eval_context, model, field="train.eval_context")  # where known unloaded
    if model.source == "tiny" and settings.seq_len > model.max_positions:
        raise ValueError(f"train.seq_len={settings.seq_len} exceeds model.max_positions={model.max_positions}")
    out = cfg.output_dir or f"results/train/{model.name}/{quantizer_label(qcfg)}-{acfg.name}-r{acfg.rank}"
    return Plan(model, data, qcfg, acfg, settings, device, dtype, module, kind, base, Path(out), tasks)


def base_weights_for(model, p: Plan) -> dict[str, torch.Tensor] | None:
    """Full-precision weights of the layers an init needs (LoftQ), captured before quantization."""
    if getattr(p.adapter, "init", "default") != "loftq":
        return None
    from harness.models.quantize import target_layers

    return {name: model.get_submodule(name).weight.detach().clone() for name in target_layers(model)}


def build_base(p: Plan):
    """(quantized model on the device, tokenizer, quantization report, full-precision weights an init needs)."""
    from harness.models.quantize import quantize_model
    from harness.models.sources import load_model

    torch.manual_seed(p.train.seed)  # tiny models are initialised from the seed
    model, tokenizer = load_model(p.model)
    weights = base_weights_for(model, p)
    module = "harness" if p.module == "none" else p.module
    calibration, cache = calibration_for(p, tokenizer, module)
    if calibration is not None:
        model.to(p.device)  # a calibration pass runs the model: on the GPU where there is one
    report = quantize_model(model, p.quantizer, module=module, calibration=calibration, cache=cache)
    model.to(p.device)
    return model, tokenizer, report, weights


def calibration_for(p: Plan, tokenizer, module: str) -> tuple[list[torch.Tensor] | None, Path | None]:
    """(the calibration batches a calibrated quantizer needs, on the run's device; where its calibrated base is
    cached), (None, None) for the other quantizers."""
    if not getattr(p.quantizer, "calibrated", False):
        return None, None
    from harness.models.calibrated import calibrated_base_path

    batches = [b.to(p.device) for b in calibration_batches(p.data, tokenizer, p.quantizer.calibration)]
    return batches, calibrated_base_path(p.model, p.quantizer, module, asdict(p.data), p.device)


def attach_adapter(p: Plan, model, weights=None):
    """The PeftModel: gradient checkpointing if asked, then the adapter (seeded) on the quantized base."""
    if p.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # the frozen embedding would otherwise cut the graph
    from harness.user_error import UserError

    torch.manual_seed(p.train.seed)  # the adapter's initial weights depend on the seed only
    try:
        return adapters.attach(model, p.adapter, total_steps=p.train.steps, base=p.base, base_weights=weights)
    except adapters.TargetError as err:  # what the skeleton could not foresee (a hub model offline): one line
        raise UserError(str(err)) from err


def build_model(p: Plan):
    """(PeftModel on the device, tokenizer, quantization report)."""
    model, tokenizer, report, weights = build_base(p)
    return attach_adapter(p, model, weights), tokenizer, report


def evaluate(model, ids: torch.Tensor, tokenizer, p: Plan):
    """The perplexity evaluation every stage uses -> harness.evaluation.perplexity.PerplexityResult (with segment losses)."""
    from harness.evaluation.perplexity import perplexity, prefix_token_id

    return perplexity(model, ids, eval_context(model, p), prefix_token=prefix_token_id(tokenizer))


def eval_context(model, p: Plan) -> int:
    """train.eval_context as set (checked against the model's positions), else the smaller of 1024 and them."""
    from harness.models.sources import resolve_context_length

    return resolve_context_length(p.train.eval_context, p.model, model, "train.eval_context")


def data_for(p: Plan, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(train blocks (n, seq_len), evaluation ids (n_tokens,))."""
    from harness.data.corpus import load_corpus
    from harness.data.tokens import pack_split, tokenize

    corpus = load_corpus(p.data)
    blocks = pack_split(corpus, "train", tokenizer, p.train.seq_len, "train.seq_len")
    ids = tokenize(getattr(corpus, p.train.eval_split), tokenizer)
    if p.train.eval_tokens:
        ids = ids[: p.train.eval_tokens]
    return blocks, ids
