"""The recipe benchmark's bookkeeping: schedule shapes, time-to-target interpolation and the goals.

The training race itself runs in ``python -m benches recipe --quick`` (nothing timed is asserted here).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from benches.bench_recipe import GPT2_RECIPE, MODERN_RECIPE, lr_factor, summarize, time_to_reach
from hypothesis import given
from hypothesis import strategies as st


@given(step=st.integers(0, 10_000), progress=st.floats(0.0, 1.5))
def test_lr_factor_stays_within_floor_and_peak(step: int, progress: float) -> None:
    for r in (GPT2_RECIPE, MODERN_RECIPE, replace(MODERN_RECIPE, decay="linear", min_lr_frac=0.2)):
        f = lr_factor(r, step, progress)
        lo = 0.0 if step < r.warmup_steps else r.min_lr_frac
        assert lo - 1e-12 <= f <= 1.0 + 1e-12


def test_lr_factor_shapes() -> None:
    r = replace(MODERN_RECIPE, warmup_steps=10, decay="warmdown", warmdown_frac=0.4, min_lr_frac=0.0)
    assert lr_factor(r, 0, 0.0) == pytest.approx(0.1)  # warmup: the first step already moves
    assert lr_factor(r, 50, 0.5) == 1.0  # constant until the warmdown
    assert lr_factor(r, 50, 0.8) == pytest.approx(0.5)
    assert lr_factor(r, 50, 1.0) == 0.0
    c = replace(r, decay="cosine", min_lr_frac=0.1)
    assert lr_factor(c, 50, 0.5) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="decay shape"):
        lr_factor(replace(r, decay="step"), 50, 0.5)


def _curve(points: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"train_s": t, "bpb": b} for t, b in points]


def test_time_to_reach_interpolates() -> None:
    curve = _curve([(0, 4.0), (30, 3.0), (60, 2.0)])
    assert time_to_reach(curve, 2.5) == pytest.approx(45.0)
    assert time_to_reach(curve, 3.0) == pytest.approx(30.0)
    assert time_to_reach(curve, 5.0) == 0.0
    assert time_to_reach(curve, 1.0) is None


def test_summarize_goals() -> None:
    out = {
        "minutes_per_recipe": 1.0,
        "recipes": {
            "gpt2": {"curve": _curve([(0, 4.0), (60, 2.0)])},
            "nanochat": {"curve": _curve([(0, 4.0), (20, 2.5), (30, 2.0), (60, 1.8)])},
        },
    }
    s = summarize(out)
    assert s["nanochat_time_to_gpt2_final_s"] == pytest.approx(30.0)
    assert s["time_fraction"] == pytest.approx(0.5)
    assert s["bpb_reduction"] == pytest.approx(0.1)
    assert all(s["goals"].values())
    out["recipes"]["nanochat"]["curve"][-1]["bpb"] = 1.95
    assert not summarize(out)["goals"]["final bpb >= 5% lower"]
