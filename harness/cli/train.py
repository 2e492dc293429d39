"""`python -m harness train [model=] [quantizer=] [adapter=] [train.*=] [output_dir=DIR]`: fine-tune one adapter
on one quantized base (harness.train does the work)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from harness.config import register_configs

register_configs()


@hydra.main(config_path="../../experiments", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from harness.train import TrainConfig, run

    run(TrainConfig(model=cfg.model, data=cfg.data, quantizer=cfg.quantizer, adapter=cfg.adapter,
                    train=OmegaConf.to_object(cfg.train), module=cfg.module, device=cfg.device,
                    compute_dtype=cfg.compute_dtype, merge=cfg.merge, output_dir=cfg.output_dir))
