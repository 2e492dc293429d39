"""Calibrated bases kept on disk: what a calibrated quantizer's pass (GPTQ, AWQ) made of a model, so a sweep, a
rerun or another sweep calibrates each (model, method, bits, group, calibration set) once.

The cache holds the calibrated layers (codes, scales, zero points, output errors) and every other parameter the
pass changed (AWQ folds its scales into the norms, or into a linear left unquantized): loading them into a freshly
loaded model and building the layers from the codes gives the same quantized model as calibrating again.
File: <cache dir>/calibrated/<hash>.pt, keyed by everything that decides its content (config_hash below).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from harness.config import default_cache_dir
from harness.records import config_hash

CACHE_FORMAT = 1  # bump when what calibrate() returns or how it is computed changes
log = logging.getLogger(__name__)


def calibrated_base_path(model_cfg, quantizer_cfg, module: str, data_identity: dict, device: torch.device,
                         cache_dir: str | Path | None = None) -> Path:
    """Where the calibrated base of this model, quantizer (its calibration settings included), layer kind,
    corpus and device type is kept: under `cache_dir`, else the model's cache folder (model.cache_dir, else
    $HARNESS_CACHE or ~/.cache/quant-harness). The key includes the quantizer's own source files and the
    calibration pass', so a changed algorithm never reads an old result."""
    model = {k: v for k, v in asdict(model_cfg).items() if k != "cache_dir"}
    data = {k: v for k, v in data_identity.items() if k != "cache_dir"}
    # compute_dtype and backend decide how the quantized layers compute, not what the pass makes of the weights
    quantizer = {k: v for k, v in asdict(quantizer_cfg).items() if k not in ("compute_dtype", "backend")}
    key = config_hash({"format": CACHE_FORMAT, "model": model, "quantizer": quantizer,
                       "module": module, "data": data, "device": torch.device(device).type,
                       "torch": torch.__version__.split("+")[0], "code": code_digest(type(quantizer_cfg))})
    root = Path(cache_dir) if cache_dir is not None else (
        Path(model_cfg.cache_dir).expanduser() if getattr(model_cfg, "cache_dir", None) else default_cache_dir())
    return root / "calibrated" / f"{key}.pt"


def code_digest(config_class: type) -> str:
    """sha256 of the .py files of the quantizer's package and of the ones it reads (calibration, intk, base)."""
    import quantizers

    library = Path(inspect.getfile(quantizers)).parent
    package = Path(inspect.getfile(config_class)).parent
    files = sorted(package.glob("*.py")) + [library / "calibration.py", library / "intk" / "__init__.py",
                                           library / "base.py"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load(path: Path, model: nn.Module) -> dict | None:
    """{"layers": {layer name: CalibratedLayer}, "costs": (seconds, peak bytes)} as cached, with the changed
    parameters put into `model`; None if absent."""
    if not path.exists():
        return None
    saved = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved["changed"].items():
            params[name].copy_(value)
    log.info("calibrated base read from %s", path)
    return saved


def snapshot(model: nn.Module, skip: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the parameters outside the quantized layers' weights, to see afterwards which the pass changed."""
    weights = {f"{name}.weight" for name in skip}
    return {n: p.detach().clone() for n, p in model.named_parameters() if n not in weights}


def save(path: Path, model: nn.Module, before: dict[str, torch.Tensor], layers: dict, costs: tuple) -> None:
    """Write the calibrated layers, the parameters that differ from `before` and the costs (seconds, peak bytes),
    atomically (a killed run leaves no half file that a later run would read)."""
    changed = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
               if n in before and not torch.equal(p, before[n])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"layers": {name: _to_cpu(layer) for name, layer in layers.items()}, "changed": changed,
                "costs": tuple(costs)}, tmp)
    os.replace(tmp, path)


def _to_cpu(layer):
    import dataclasses

    qt = layer.quantized
    fields = {f.name: getattr(qt, f.name) for f in dataclasses.fields(qt)}
    cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in fields.items()}
    return dataclasses.replace(layer, quantized=dataclasses.replace(qt, **cpu))
