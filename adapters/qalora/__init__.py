"""QA-LoRA (Xu et al. 2023), the harness' own: LoRA with group-pooled inputs on a base in intk's group-wise format
(intk, GPTQ, AWQ or HQQ at 2, 3, 4 or 8 bits), merged by folding the update into the zero points, so the merged model is still an
integer model with unchanged codes. See layer.py for the pooling convention and the fold.

Saved in PEFT's LoRA format with use_qalora=true and qalora_group_size (PEFT applies the same pooling to GPTQ
layers). Codebook formats (nf4, fp4, ...) and bitsandbytes layers have no zero point, so they are rejected
before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import AdapterConfig, IncompatibleError, resolve_targets
from harness.registry import ADAPTERS

QUANTIZERS_ACCEPTED = ("a quantizer storing intk's format (per-group scale and zero point): intk, gptq, awq or hqq "
                       "(bits 2, 3, 4 or 8, module=harness), e.g. quantizer=intk quantizer.bits=4")


@ADAPTERS.register("qalora", "QA-LoRA: group-pooled LoRA on intk that merges into the zero points (own)")
@dataclass
class QALoraConfig(AdapterConfig):
    name: str = "qalora"

    layer_kinds = ("harness",)
    has_rslora = False

    def check_base(self, quantizer_config, layer_kind: str) -> dict:
        name = getattr(quantizer_config, "name", "none")
        if not getattr(quantizer_config, "group_zero_points", False):
            raise IncompatibleError(
                f"adapter qalora cannot run on quantizer {name!r}: QA-LoRA folds its update into per-group zero "
                f"points, which only a group-wise integer grid has. Accepted: {QUANTIZERS_ACCEPTED}"
            )
        super().check_base(quantizer_config, layer_kind)
        return {"group_size": quantizer_config.group_size}

    def peft_config(self, model, total_steps: int, base: dict):
        import peft

        from adapters.qalora.layer import QALoraLinear
        from quantizers.linear import QuantLinear

        if "group_size" not in base:
            raise ValueError("qalora needs check_base's result (the intk group size) to attach")
        config = peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                                 target_modules=resolve_targets(self.targets), use_qalora=True,
                                 qalora_group_size=base["group_size"])
        config._register_custom_module({QuantLinear: QALoraLinear})
        return config

    def merge_layer(self, layer, adapter_name: str) -> None:
        from adapters.qalora.layer import fold_into_zero_points

        fold_into_zero_points(layer, adapter_name)
