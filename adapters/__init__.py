"""Adapters (LoRA, LoHa, LoKr, AdaLoRA, QA-LoRA): one sub-package each, registered in harness.registry.ADAPTERS.

Importing this package imports every sub-package. None has landed yet: they arrive with the adapters issue.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")
