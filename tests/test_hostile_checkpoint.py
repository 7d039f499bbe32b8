"""Hostile checkpoints: missing tensors, wrong shapes, corrupt safetensors headers, broken model.json, and a
trainer state that is a malicious pickle (its ``__reduce__`` would create a marker file: it must be refused
by ``torch.load(weights_only=True)`` without running). Each case through the API and, for a few, the CLIs
(exit status 2, one line, no traceback). The table is ``tests/reliability/hostile_cases.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability import hostile_cases as hc


@pytest.mark.parametrize("case", hc.cases_for("checkpoint"), ids=lambda c: c.name)
def test_checkpoint(case: hc.Case, hostile_model_dir: Path) -> None:
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail


def test_fixture_checkpoint_is_sound(hostile_model_dir: Path) -> None:
    """The untampered fixture loads, so every refusal above is due to its tampering."""
    from gptrs.model import GPT
    from gptrs.training.checkpoint import is_complete, load_trainer_state

    d = hc.Fixtures(hostile_model_dir).model_dir
    assert is_complete(d)
    assert GPT.from_pretrained(d).config.vocab_size == 300
    assert load_trainer_state(d)["step"] == 1


def test_malicious_pickle_would_run_if_unpickled(hostile_model_dir: Path, tmp_path: Path) -> None:
    """The payload is real: plain ``pickle.load`` of the same file does create the marker."""
    import pickle

    evil = hc._malicious_state("selfcheck", zipped=False)(hc.Fixtures(hostile_model_dir))
    marker = evil.parent.parent / hc.MARKER
    assert not marker.exists()
    with open(evil / "trainer_state.pt", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
