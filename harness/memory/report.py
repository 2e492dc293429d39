"""`python -m harness memory`: the predictor's parts for full fine-tuning, a 16-bit base + adapter and a quantized
base + adapter, as memory.csv and memory.md (and the paper tables it was asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from harness.device import resolve_device
from harness.memory.predictor import PARTS, Scenario, predict
from harness.training.config import TrainSettings, resolve_optimizer


@dataclass
class MemoryConfig:
    """`python -m harness memory [model=] [quantizer=] [adapter=] [train.*=]`."""

    model: Any = None
    quantizer: Any = None  # the quantized scenario's quantizer
    adapter: Any = None  # the adapter of the two adapter scenarios
    train: TrainSettings = field(default_factory=TrainSettings)  # batch_size, seq_len, checkpointing, optimizer
    precision: str = "mixed"  # mixed: the seeds' 16 B per trainable parameter; fp32: harness train's adapters
    weight_bytes: int = 2  # frozen unquantized weights (2: bf16, as the seeds and QLoRA count)
    activations: bool = True
    vocab_size: Optional[int] = None  # resize the embedding (added tokens), as a fine-tuning script would
    output_dir: Optional[str] = None  # None: results/memory/<model>
    published: Optional[dict[str, float]] = None  # full / lora / quantized -> GB before activations
    published_trainable: Optional[int] = None
    published_source: str = ""
    # +paper=qlora_double_quant: models, the quantizer without and with DQ and the published figures; when set,
    # the command writes harness.memory.double_quant's table instead of the scenarios (model/quantizer unused)
    double_quant_table: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.double_quant_table is not None:
            from harness.memory.double_quant import table_config

            table_config(self.double_quant_table)  # raises naming the field and the fix
        if self.precision not in ("mixed", "fp32"):
            raise ValueError(f"precision={self.precision!r} is not accepted; use mixed or fp32")
        if self.weight_bytes not in (1, 2, 4):
            raise ValueError(f"weight_bytes={self.weight_bytes!r} is not accepted; use 2 (bf16/fp16) or 4 (fp32)")


def memory_config(cfg) -> MemoryConfig:
    """A composed `memory` DictConfig -> MemoryConfig (model, quantizer and adapter nodes stay nodes: report()
    validates each with its own schema)."""
    from omegaconf import OmegaConf

    nodes = {k: cfg[k] for k in ("model", "quantizer", "adapter")}
    rest = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in nodes and k != "train"}
    return MemoryConfig(**nodes, train=OmegaConf.to_object(cfg.train), **rest)


def scenarios(cfg: MemoryConfig, quantizer, adapter, optimizer: str) -> list[Scenario]:
    from harness.config import quantizer_label

    common = {"weight_bytes": cfg.weight_bytes, "precision": cfg.precision, "optimizer": optimizer}
    rows = [Scenario("full fine-tuning", None, None, **common)]
    if adapter.name != "qalora":  # QA-LoRA exists only on an intk base (it folds into the zero points)
        rows.append(Scenario(f"16-bit base + {adapter.name}", None, adapter, **common))
    return [*rows, Scenario(f"{quantizer_label(quantizer)} base + {adapter.name}", quantizer, adapter, **common)]


def check(cfg: MemoryConfig) -> None:
    """The model, quantizer and adapter validated, and the adapter's targets found in the model's skeleton."""
    from adapters.base import check_targets
    from harness.config import adapter_config, quantizer_config
    from harness.models.skeleton import check_available, module_kinds
    from harness.models.sources import model_config

    model = model_config(cfg.model)
    quantizer_config(cfg.quantizer)
    adapter = adapter_config(cfg.adapter)
    if not model.architecture:  # the meta device needs the config: from the YAML, else the cache or the hub
        check_available(model)
    if cfg.double_quant_table is None:  # that table sizes the quantized weights alone: no adapter in it
        check_targets(adapter, module_kinds(model), model.name)


def report(cfg: MemoryConfig):
    """Predict every scenario; write memory.csv (tidy) and memory.md; return the wide table (GB). With
    double_quant_table set: harness.memory.double_quant's table instead."""
    if cfg.double_quant_table is not None:
        from harness.memory import double_quant as double_quant_table

        return double_quant_table.report(cfg)
    from pathlib import Path

    import pandas as pd

    from harness.config import adapter_config, quantizer_config
    from harness.models.sources import model_config
    from harness.records import write_run_json

    model = model_config(cfg.model)
    settings = cfg.train
    quantizer = quantizer_config(cfg.quantizer)
    adapter = adapter_config(cfg.adapter)
    optimizer = resolve_optimizer(settings.optimizer, resolve_device("auto"))  # what `train` would use here
    dtype = torch.float32 if cfg.precision == "fp32" else torch.bfloat16
    rows, counts = [], {}
    for sc in scenarios(cfg, quantizer, adapter, optimizer):
        parts = predict(model, sc, settings.batch_size, settings.seq_len, settings.gradient_checkpointing,
                        cfg.activations, dtype, cfg.vocab_size)
        counts[sc.label] = (parts["trainable_params"], parts["total_params"])
        rows += [{"scenario": sc.label, "part": k, "bytes": parts[k]} for k in PARTS]
    tidy = pd.DataFrame(rows).assign(model=model.name, batch_size=settings.batch_size, seq_len=settings.seq_len,
                                     checkpointing=settings.gradient_checkpointing, precision=cfg.precision)
    table = tidy.pivot(index="scenario", columns="part", values="bytes")[list(PARTS)] / 1e9
    table = table.loc[[sc for sc in counts]]
    table["before activations"] = table.drop(columns="activations").sum(axis=1)
    table["total"] = table["before activations"] + table["activations"]
    table["trainable params"] = [counts[sc][0] for sc in table.index]
    table["trainable %"] = [100 * counts[sc][0] / counts[sc][1] for sc in table.index]
    if cfg.published:
        table["published (GB)"] = [cfg.published.get(_kind(sc)) for sc in table.index]
    out = Path(cfg.output_dir or f"results/memory/{model.name}")
    out.mkdir(parents=True, exist_ok=True)
    tidy.to_csv(out / "memory.csv", index=False)
    text = (f"# Predicted training memory: {model.name}, batch {settings.batch_size} x {settings.seq_len}"
            f"{', gradient checkpointing' if settings.gradient_checkpointing else ''}, precision {cfg.precision}, "
            f"optimizer {optimizer} (GB = 1e9 bytes)\n\n" + table.to_markdown(floatfmt=[""] + [".0f" if c == "trainable params" else ".3f" for c in table.columns]) + "\n")
    if cfg.published_source:
        text += f"\nPublished: {cfg.published_source}\n"
    (out / "memory.md").write_text(text)
    write_run_json(out, cfg, "memory")
    print(text + f"\nwrote {out}/memory.csv, memory.md, run.json")
    return table


def _kind(label: str) -> str:
    """The published scenario a label stands for: full, lora (16-bit base) or quantized."""
    if label == "full fine-tuning":
        return "full"
    return "lora" if label.startswith("16-bit") else "quantized"
