"""Shared pytest setup: Hypothesis profiles (chosen with the ``HYPOTHESIS_PROFILE`` environment variable), and
the fixture directories of the hostile-input tables.

- ``ci`` (the default): Hypothesis' usual 100 examples per property, no per-example deadline (shared CI
  machines are too noisy for one).
- ``slow``: 20x the examples, for a long fuzzing run: ``HYPOTHESIS_PROFILE=slow pytest -m slow ...``.

A test that sets ``max_examples`` itself keeps its own count; scale it from ``settings.default.max_examples``
(read at import time, after this file has loaded the profile) to follow the profile.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benches import hostile_cases as hc
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile(
    "slow", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def hostile_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures of ``benches/hostile_cases.py`` without a model: a small trained tokenizer."""
    path = tmp_path_factory.mktemp("hostile_tok")
    hc.prepare(path, model=False)
    return path


@pytest.fixture(scope="session")
def hostile_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures of ``benches/hostile_cases.py`` with the tiny checkpoint (shared by the checkpoint and
    generation tables: every case tampers with a copy, never with these files)."""
    path = tmp_path_factory.mktemp("hostile_model")
    hc.prepare(path, model=True)
    return path
