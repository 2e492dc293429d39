"""`python -m harness train`: one fine-tuning loop for every adapter on every quantized base.

A run: check the configs (adapter x quantizer compatibility included) -> load the model -> quantize ->
attach the adapter -> perplexity before -> train -> perplexity after -> save the adapter (PEFT's format) ->
merge -> perplexity merged -> metrics.csv, loss.csv, run.json. Nothing is loaded before the configs pass.

The loop is deliberately plain (what a researcher would write by hand, so the harness adds no overhead):
causal-LM loss on packed blocks of the train split, AdamW (bitsandbytes' paged AdamW on CUDA), gradient
accumulation, linear warm-up then cosine decay, gradient clipping, optional gradient checkpointing. Seeding
covers the weights of the adapter, the data order and dropout, so the same seed gives the same losses on
the CPU bit for bit.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapters import base as adapters
from harness.config import adapter_config, quantizer_config, validated
from harness.device import check_compute_dtype, check_device, resolve_compute_dtype, resolve_device
from harness.measure import PeakMemory, memory_in_use, release_freed_memory, reuse_freed_memory
from harness.quantize_model import tensor_bytes
from harness.records import write_run_json

OPTIMIZERS = ("auto", "adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")
MODULES = ("auto", "harness", "bitsandbytes")


@dataclass
class TrainSettings:
    """`train.*` knobs."""

    steps: int = 30  # optimizer steps; 0: no fine-tuning, the quantized base is evaluated only
    batch_size: int = 4  # sequences per micro-batch
    seq_len: int = 128  # tokens per sequence (packed blocks of the train split)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # share of the steps spent warming the learning rate up from 0
    max_grad_norm: float = 1.0  # 0: no clipping
    optimizer: str = "auto"  # auto: paged_adamw_32bit on CUDA (bitsandbytes), adamw on the CPU
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_tokens: int = 4096  # validation tokens scored before / after / merged (0: the whole split)
    eval_context: int = 1024  # window of the perplexity evaluation (capped at the model's maximum)
    eval_split: str = "validation"
    progress: bool = True  # a progress bar with loss, learning rate and tokens/s

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_context"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "steps" else 1):
                zero = " (steps=0: evaluate the quantized base only)" if name == "steps" else ""
                raise ValueError(f"train.{name}={value!r} is not accepted; use a positive integer{zero}")
        if not self.lr > 0:
            raise ValueError(f"train.lr={self.lr!r} is not accepted; use a positive learning rate (e.g. 3e-4)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio={self.warmup_ratio!r} is not accepted; use a value in [0, 1)")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("train.max_grad_norm and train.weight_decay must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer={self.optimizer!r} is not accepted; use one of {list(OPTIMIZERS)}")
        if self.eval_tokens < 0:
            raise ValueError(f"train.eval_tokens={self.eval_tokens} must be >= 0 (0: the whole split)")
        if self.eval_split not in ("train", "validation", "test"):
            raise ValueError(f"train.eval_split={self.eval_split!r} is not accepted; use validation, test or train")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


@dataclass
class TrainConfig:
    """`python -m harness train [model=] [quantizer=] [adapter=] [train.*=] [output_dir=DIR]`."""

    model: Any = None  # model/*.yaml
    data: Any = None  # data/*.yaml
    quantizer: Any = None  # quantizer/*.yaml (quantizer=none: the unquantized base)
    adapter: Any = None  # adapter/*.yaml
    train: TrainSettings = field(default_factory=TrainSettings)
    module: str = "auto"  # auto | harness | bitsandbytes: which layer holds the quantized weights
    device: str = "auto"  # auto: CUDA when present, else CPU
    # auto: bf16 where the device computes it natively, else fp32 (fp16 on old GPUs); a quantizer's own explicit
    # compute_dtype takes precedence over this one
    compute_dtype: str = "auto"
    merge: bool = True  # merge the adapter after training and evaluate the merged model
    output_dir: str | None = None  # None: results/train/<model>/<quantizer>-<adapter>-r<rank>

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise ValueError(f"module={self.module!r} is not accepted; use one of {list(MODULES)}")
        check_device(self.device)
        check_compute_dtype(self.compute_dtype)


def train_config(node) -> TrainConfig:
    """A composed train (or sweep) node -> TrainConfig, validated (a mistake raises naming the field)."""
    from omegaconf import OmegaConf

    return TrainConfig(model=node.model, data=node.data, quantizer=node.quantizer, adapter=node.adapter,
                       train=validated(TrainSettings, node.train), module=node.module, device=node.device,
                       compute_dtype=node.compute_dtype, merge=node.merge,
                       output_dir=OmegaConf.select(node, "output_dir"))


# ---------------------------------------------------------------- the plan, from configs alone


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


def quantizer_label(q) -> str:
    """nf4, nf4_dq, int3_g32, ...: a short unique name for output folders and tables."""
    if q.name == "intk":
        return f"int{q.bits}_g{q.group_size}"
    return q.name + ("_dq" if getattr(q, "double_quant", False) else "")


def resolve_layer(module: str, qcfg, acfg: adapters.AdapterConfig) -> tuple[str, str]:
    """(module, layer kind) for a quantizer and an adapter: bitsandbytes' layers where `auto` may use them and
    the adapter accepts them, the harness' QuantLinear otherwise."""
    from harness.quantize_model import bnb_kind

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
    from harness.data import data_config
    from harness.models import model_config

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
    if model.source == "tiny" and settings.seq_len > model.max_positions:
        raise ValueError(f"train.seq_len={settings.seq_len} exceeds model.max_positions={model.max_positions}")
    out = cfg.output_dir or f"results/train/{model.name}/{quantizer_label(qcfg)}-{acfg.name}-r{acfg.rank}"
    return Plan(model, data, qcfg, acfg, settings, device, dtype, module, kind, base, Path(out))


# ---------------------------------------------------------------- pieces


def base_weights_for(model, p: Plan) -> dict[str, torch.Tensor] | None:
    """Full-precision weights of the layers an init needs (LoftQ), captured before quantization."""
    if getattr(p.adapter, "init", "default") != "loftq":
        return None
    from harness.quantize_model import target_layers

    return {name: model.get_submodule(name).weight.detach().clone() for name in target_layers(model)}


def build_base(p: Plan):
    """(quantized model on the device, tokenizer, quantization report, full-precision weights an init needs)."""
    from harness.models import load_model
    from harness.quantize_model import quantize_model

    torch.manual_seed(p.train.seed)  # tiny models are initialised from the seed
    model, tokenizer = load_model(p.model)
    weights = base_weights_for(model, p)
    module = "harness" if p.module == "none" else p.module
    report = quantize_model(model, p.quantizer, module=module)
    model.to(p.device)
    return model, tokenizer, report, weights


def attach_adapter(p: Plan, model, weights=None):
    """The PeftModel: gradient checkpointing if asked, then the adapter (seeded) on the quantized base."""
    if p.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # the frozen embedding would otherwise cut the graph
    torch.manual_seed(p.train.seed)  # the adapter's initial weights depend on the seed only
    return adapters.attach(model, p.adapter, total_steps=p.train.steps, base=p.base, base_weights=weights)


def build_model(p: Plan):
    """(PeftModel on the device, tokenizer, quantization report)."""
    model, tokenizer, report, weights = build_base(p)
    return attach_adapter(p, model, weights), tokenizer, report


def make_optimizer(params, s: TrainSettings, device: torch.device):
    name = s.optimizer
    if name == "auto":
        name = "paged_adamw_32bit" if device.type == "cuda" else "adamw"
    if name == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    import bitsandbytes.optim as bnb_optim

    cls = {"paged_adamw_32bit": bnb_optim.PagedAdamW32bit, "paged_adamw_8bit": bnb_optim.PagedAdamW8bit,
           "adamw_8bit": bnb_optim.AdamW8bit}[name]
    return cls(params, lr=s.lr, weight_decay=s.weight_decay)


def lr_factor(step: int, s: TrainSettings) -> float:
    """Linear warm-up over warmup_ratio of the steps, then cosine decay to 0 (step counts from 0)."""
    warmup = math.ceil(s.warmup_ratio * s.steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, s.steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def batches(blocks: torch.Tensor, batch_size: int, seed: int):
    """Endless micro-batches (batch_size, seq_len) of the packed blocks, reshuffled every epoch (seeded)."""
    if blocks.shape[0] < batch_size:
        raise ValueError(f"the train split packs into {blocks.shape[0]} blocks, fewer than train.batch_size="
                         f"{batch_size}; lower train.seq_len or train.batch_size, or use a larger corpus")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(blocks.shape[0], generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield blocks[order[i:i + batch_size]]


def fine_tune(model, blocks: torch.Tensor, p: Plan, memory: dict | None = None) -> list[dict]:
    """Train the adapter in place -> one row per optimizer step (step, loss, lr, tokens_per_second).
    memory: if given, receives the bytes of the gradients and of the optimizer state (read once, at step 0)."""
    s = p.train
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = make_optimizer(params, s, p.device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s))
    data = batches(blocks, s.batch_size, s.seed)
    torch.manual_seed(s.seed)  # dropout
    model.train()
    rows = []
    bar = _progress(s)
    for step in range(s.steps):
        start = time.perf_counter()
        loss_sum = 0.0
        for _ in range(s.grad_accum):
            ids = next(data).to(p.device)
            loss = model(input_ids=ids, labels=ids).loss / s.grad_accum
            loss.backward()
            loss_sum += loss.item()
            # drop the graph's last reference now, not when the next forward reassigns `loss`: kept alive
            # through the next forward, steps on the CPU ran ~10% slower (more fresh pages faulted in)
            del loss
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"the loss became {loss_sum} at step {step}; lower train.lr")
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if memory is not None and step == 0:  # sizes are fixed after the first step; reading them costs ~nothing
            memory["gradients"] = tensor_bytes(q.grad for q in params if q.grad is not None)
            memory["optimizer"] = tensor_bytes(v for st in optimizer.state.values() for v in st.values()
                                               if isinstance(v, torch.Tensor))
        p.adapter.on_step(model, step)  # AdaLoRA reads this step's gradients: before zero_grad
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        rate = s.tokens_per_step / (time.perf_counter() - start)
        rows.append({"step": step, "loss": loss_sum, "lr": lr, "tokens_per_second": rate})
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
            bar.update()
    if bar is not None:
        bar.close()
    model.eval()
    return rows


def _progress(s: TrainSettings):
    if not s.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=s.steps, desc="train", unit="step", dynamic_ncols=True)


def evaluate(model, ids: torch.Tensor, tokenizer, p: Plan):
    """The perplexity evaluation every stage uses -> harness.evaluate.PerplexityResult (with segment losses)."""
    from harness.evaluate import perplexity, prefix_token_id

    return perplexity(model, ids, eval_context(model, p), prefix_token=prefix_token_id(tokenizer))


def eval_context(model, p: Plan) -> int:
    return min(p.train.eval_context, _max_positions(model))


def _max_positions(model) -> int:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or 1 << 30


def data_for(p: Plan, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(train blocks (n, seq_len), evaluation ids (n_tokens,))."""
    from harness.data import load_corpus, pack, tokenize

    corpus = load_corpus(p.data)
    blocks = pack(tokenize(corpus.train, tokenizer), p.train.seq_len)
    ids = tokenize(getattr(corpus, p.train.eval_split), tokenizer)
    if p.train.eval_tokens:
        ids = ids[: p.train.eval_tokens]
    return blocks, ids


# ---------------------------------------------------------------- the whole run


def run(cfg: TrainConfig) -> dict[str, float]:
    """Fine-tune as configured; write DIR/metrics.csv, loss.csv, adapter/, run.json; return the metrics."""
    started = time.perf_counter()
    p = plan(cfg)
    print(f"train: {p.model.name}, quantizer {quantizer_label(p.quantizer)} on {p.layer_kind} layers, adapter "
          f"{p.adapter.name} r={p.adapter.rank}, device {p.device}, compute {p.compute_dtype} -> {p.output_dir}")
    model, tokenizer, report = build_model(p)
    blocks, ids = data_for(p, tokenizer)
    before = evaluate(model, ids, tokenizer, p)
    print(f"  perplexity before {before.perplexity:.3f} ({ids.numel()} {p.train.eval_split} tokens)")
    if p.train.steps == 0:
        metrics, rows = base_metrics(p, report, before), []
    else:
        metrics, rows, _ = train_and_evaluate(p, model, tokenizer, report, blocks, ids, before, cfg.merge)
    metrics["seconds"] = time.perf_counter() - started
    write_outputs(p, cfg, metrics, rows, p.adapter.report(model))
    return metrics


def base_metrics(p: Plan, report, before) -> dict[str, float]:
    """What a run with train.steps=0 reports: the quantized base's perplexity, its bits and weight error."""
    metrics = {"perplexity_before": before.perplexity, "bits_per_param": bits_per_param(p, report)}
    if report.layers:
        metrics["weight_sqnr_db"] = report.weight_sqnr_db
    return metrics


def bits_per_param(p: Plan, report) -> float:
    return report.bits_per_param if report.layers else torch.finfo(getattr(torch, p.compute_dtype)).bits


def train_and_evaluate(p: Plan, model, tokenizer, report, blocks: torch.Tensor, ids: torch.Tensor, before,
                       merge: bool) -> tuple[dict[str, float], list[dict], dict]:
    """Fine-tune the attached adapter with its memory measured, evaluate, save the adapter into p.output_dir,
    merge and evaluate again if asked -> (metrics, loss rows, per-segment losses of each stage).
    before: the PerplexityResult of the attached model before training."""
    trainable, total = model.get_nb_trainable_parameters()
    memory = weight_bytes(model)
    release_freed_memory()  # so the peak below is the training's, not what loading left behind
    start = memory_in_use(p.device)
    train_start = time.perf_counter()
    with reuse_freed_memory(p.device), PeakMemory(p.device) as peak:
        rows = fine_tune(model, blocks, p, memory)
    train_seconds = time.perf_counter() - train_start
    peak_bytes = training_peak(peak, start, memory, p.device)
    after = evaluate(model, ids, tokenizer, p)
    print(f"  perplexity after  {after.perplexity:.3f}")
    p.output_dir.mkdir(parents=True, exist_ok=True)
    adapters.save(model, p.output_dir / "adapter", p.adapter)
    metrics = {
        **base_metrics(p, report, before), "perplexity_after": after.perplexity,
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
        "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total,
        "train_tokens": p.train.tokens_per_step * p.train.steps, "train_seconds": train_seconds,
        "train_tokens_per_second": p.train.tokens_per_step * p.train.steps / train_seconds,
        "peak_memory_bytes": peak_bytes,
        # CUDA: what the caching allocator held at its peak (>= allocated); CPU: the same as the peak
        "peak_memory_reserved_bytes": peak.reserved_bytes if p.device.type == "cuda" else peak_bytes,
        **memory_rows(memory, peak_bytes),
    }
    losses = {"before": before.losses(), "after": after.losses()}
    if merge:
        adapters.merge(model, p.adapter)
        metrics["merged_quantized_share"] = quantized_share(model)
        merged = evaluate(model, ids, tokenizer, p)
        metrics["perplexity_merged"] = merged.perplexity
        losses["merged"] = merged.losses()
        print(f"  perplexity merged {metrics['perplexity_merged']:.3f}")
    return metrics, rows, losses


def quantized_share(model) -> float:
    """Share of the adapted layers whose base still holds quantized storage (after a merge: did it stay
    quantized, or did it fall back to a dense weight?)."""
    from adapters.base_layer import layer_kind

    layers = adapters.tuner_layers(model)
    return sum(layer_kind(m.get_base_layer()) != "dense" for _, m in layers) / max(1, len(layers))


def weight_bytes(model) -> dict[str, int]:
    """Bytes of the quantized weights (codes + constants), the other frozen weights, and the adapter, measured
    from the tensors themselves (each stored tensor once)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from adapters.base_layer import layer_kind, stored_tensors
    from harness.quantize_model import module_tensors

    quantized, frozen, trainable = [], [], []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):  # holds nothing itself; its `weight` property is the base layer's
            continue
        is_linear = isinstance(module, torch.nn.Linear)
        if is_linear and layer_kind(module) != "dense":
            quantized += list(stored_tensors(module).values())
            frozen += [module.bias] if module.bias is not None else []
            continue
        for t in module_tensors(module):
            (trainable if t.requires_grad else frozen).append(t)
    return {"quantized_weights": tensor_bytes(quantized), "other_weights": tensor_bytes(frozen),
            "adapter_weights": tensor_bytes(trainable)}


def training_peak(peak: PeakMemory, start: int, memory: dict[str, int], device: torch.device) -> int:
    """Peak bytes of training. CUDA: the allocator's peak during the loop (weights included, as they live on the
    GPU). CPU: the weights measured from their tensors plus the resident set's growth during the loop; the
    process's whole resident set would also count the Python runtime, libraries, tokenizer and corpus."""
    if device.type == "cuda":
        return peak.bytes
    static = memory["quantized_weights"] + memory["other_weights"] + memory["adapter_weights"]
    return static + peak.bytes - start


def memory_rows(parts: dict[str, int], peak: int) -> dict[str, int]:
    """memory_<part>_bytes rows; `rest` (activations, workspace, allocator slack) is the peak minus the others."""
    rows = {f"memory_{name}_bytes": value for name, value in parts.items()}
    rows["memory_rest_bytes"] = peak - sum(parts.values())
    return rows


def resolved(p: Plan) -> dict[str, Any]:
    """What the run decided that the config left open (device=auto, compute_dtype=auto, module=auto, ...)."""
    return {"device": str(p.device), "compute_dtype": p.compute_dtype, "module": p.module,
            "layer_kind": p.layer_kind, "quantizer": asdict(p.quantizer) | {"label": quantizer_label(p.quantizer)},
            "adapter": asdict(p.adapter)}


def write_outputs(p: Plan, cfg: TrainConfig, metrics: dict, rows: list[dict], extra: dict) -> None:
    out = p.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        writer.writerows([k, float(v)] for k, v in metrics.items())
    with open(out / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "tokens_per_second"])
        writer.writeheader()
        writer.writerows(rows)
    write_run_json(out, cfg, "train", resolved=resolved(p) | extra)
    print(f"wrote {out}/metrics.csv, loss.csv, adapter/, run.json")
