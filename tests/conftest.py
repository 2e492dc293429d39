"""Shared test settings: hypothesis profiles and a quiet bitsandbytes.

Profiles (pick with HYPOTHESIS_PROFILE=...):
  default   few examples per property, derandomized so CI runs are reproducible; keeps the suite fast
  thorough  many random examples, for hunting bugs locally (minutes)
"""

import logging
import os

from hypothesis import HealthCheck, settings

# bitsandbytes logs a harmless warning about an optional `kernels` package when imported on CPU
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

# deadline=None: the first example of a test pays torch's one-off kernel warm-up, which is not slowness
settings.register_profile(
    "default", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
