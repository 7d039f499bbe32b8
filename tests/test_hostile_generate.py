"""Hostile generation arguments: empty prompt, top_p outside (0, 1], negative or NaN temperature, top_k 0, a seed
that is not an integer: ``ValueError`` from ``GPT.generate`` and exit status 2 with one line from
``python -m gptrs.generate``. A prompt longer than the context is not an error: it is cropped from the left with
one warning, and the output equals generating from the last ``max_seq_len`` tokens. The table is
``tests/reliability/hostile_cases.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability import hostile_cases as hc


@pytest.mark.parametrize("case", hc.cases_for("generation"), ids=lambda c: c.name)
def test_generation(case: hc.Case, hostile_model_dir: Path) -> None:
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail


def test_valid_arguments_generate(hostile_model_dir: Path) -> None:
    """The same model and arguments at their limits work, so the refusals above are about the values."""
    import torch

    from gptrs.model import GPT

    model = GPT.from_pretrained(hc.Fixtures(hostile_model_dir).model_dir).eval()
    x = torch.tensor([[1, 2, 3]])
    for kw in ({"top_p": 1.0}, {"top_p": 1e-6}, {"temperature": 0.0}, {"top_k": 1}, {"seed": 0}):
        out = model.generate(x, 4, **kw)
        assert out.shape == (1, 7) and torch.equal(out[:, :3], x)
    a = model.generate(x, 5, temperature=1.0, seed=7)
    b = model.generate(x, 5, temperature=1.0, seed=7)
    assert torch.equal(a, b)
