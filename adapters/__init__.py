"""Adapters (LoRA, LoHa, LoKr, AdaLoRA, QA-LoRA): one sub-package each, registered in harness.registry.ADAPTERS.

Importing this package imports every sub-package, so a new adapter is one folder (plus one YAML under
experiments/adapter/) and nothing else changes. base.py holds what they share; quantizers/layers.py is
their one view of the (quantized) layer under them.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")
