"""Quantizers: one sub-package per format, each registering itself in harness.registry.QUANTIZERS.

Importing this package imports every sub-package, so a new format is one folder (plus one YAML under
experiments/quantizer/) and nothing else changes.
"""

import importlib
import pkgutil

from quantizers import bnb  # noqa: F401  (adds bitsandbytes' dequantizer to base.DEQUANTIZERS)
from quantizers.base import (  # noqa: F401  (the public vocabulary)
    Backend,
    PerBlock,
    PerGroup,
    PerRow,
    QuantizedTensor,
    Quantizer,
    QuantizerConfig,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")
