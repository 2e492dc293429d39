"""`python -m harness sensitivity [model=] [quantizer=] [data=] [granularity=layer] [top_k=[1,2,4]]`: the
perplexity increase when one group of layers (a block, a projection type, a layer) is quantized and the rest is
not, ranked, as a heatmap, and the mixed-precision plans it suggests (harness.sensitivity does the work)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from harness.config import register_configs
from harness.sensitivity import register_schema
from harness.user_error import exits_on_user_error, validating

register_configs()
register_schema()


def check(cfg: DictConfig) -> None:
    """Validate the whole config (model, data, both quantizers, the knobs) before anything is loaded."""
    from harness.config import quantizer_config, validated
    from harness.data import data_config
    from harness.models import check_context_length, model_config
    from harness.sensitivity import SensitivityConfig, resolved_quantizers

    with validating():
        validated(SensitivityConfig, cfg)
        check_context_length(cfg.context_length, model_config(cfg.model),  # where the limit is known unloaded
                             field="sensitivity.context_length")
        data_config(cfg.data)
    for key in ("quantizer", "keep_8bit"):
        with validating(key):
            quantizer_config(cfg[key])
    with validating():
        resolved_quantizers(cfg)  # one compute dtype for both


@hydra.main(config_path="../../experiments", config_name="sensitivity", version_base=None)
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from harness.sensitivity import run

    check(cfg)
    run(cfg)
