"""Shared pytest setup: Hypothesis profiles, chosen with the ``HYPOTHESIS_PROFILE`` environment variable.

- ``ci`` (the default): Hypothesis' usual 100 examples per property, no per-example deadline (shared CI
  machines are too noisy for one).
- ``slow``: 20x the examples, for a long fuzzing run: ``HYPOTHESIS_PROFILE=slow pytest -m slow ...``.

A test that sets ``max_examples`` itself keeps its own count; scale it from ``settings.default.max_examples``
(read at import time, after this file has loaded the profile) to follow the profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile(
    "slow", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
