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
import torch
from hypothesis import HealthCheck, settings

from gptrs import GPT

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile(
    "slow", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def tiny_gpt(
    seed: int = 0, *, weight_std: float | None = None, perturb: float = 0.0, **overrides: object
) -> GPT:
    """The one tiny-model builder of the suite: ``GPT(**defaults | overrides)`` after ``manual_seed(seed)``;
    overrides may be any ``ModelConfig`` switch (``arch="nanochat"`` for the other recipe).

    ``weight_std``: re-draw every matrix from N(0, weight_std / sqrt(fan_in)) so the outputs depend on the
    whole context (the 0.02 init gives near-uniform logits). ``perturb``: add that much N(0, 1) noise to
    every tensor, biases and norms included, so a mixed-up tensor cannot go unnoticed in a round trip.
    """
    args: dict[str, object] = dict(
        vocab_size=64, embed_dim=32, ff_dim=64, num_layers=2, heads=4, max_seq_len=16, pad_token_id=None
    )
    args.update(overrides)
    torch.manual_seed(seed)
    model = GPT(**args)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            if weight_std is not None and p.dim() == 2:
                p.normal_(0.0, weight_std / p.size(1) ** 0.5)
            if perturb:
                p.add_(perturb * torch.randn_like(p))
    return model


def left_padded(lengths: list[int], seed: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths (ids 1..vocab-1), left padded with 0 to the longest, and their
    attention mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), T), generator=g)
    mask = torch.ones(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, : T - n] = 0
        ids[row, : T - n] = 0
    return ids, mask


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one intra-op thread (tiny models run fastest so, and CI machines are shared);
    opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def hostile_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures of ``tests/reliability/hostile_cases.py`` without a model: a small trained tokenizer."""
    from tests.reliability import hostile_cases as hc  # here, so a test's worker process can import conftest

    path = tmp_path_factory.mktemp("hostile_tok")
    hc.prepare(path, model=False)
    return path


@pytest.fixture(scope="session")
def hostile_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures of ``tests/reliability/hostile_cases.py`` with the tiny checkpoint (shared by the checkpoint and
    generation tables: every case tampers with a copy, never with these files)."""
    from tests.reliability import hostile_cases as hc

    path = tmp_path_factory.mktemp("hostile_model")
    hc.prepare(path, model=True)
    return path
