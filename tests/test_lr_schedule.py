"""The learning-rate schedule: linear warmup to the peak, then cosine decay to the floor, or the peak held and
a linear warmdown to the floor (``training.warmdown_ratio``)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptrs.training.lr_schedule import WarmupCosine, lr_at

cosines = st.builds(
    lambda max_lr, frac, warmup, extra: WarmupCosine(max_lr, max_lr * frac, warmup, warmup + extra),
    st.floats(1e-5, 1.0),
    st.floats(0.0, 1.0),
    st.integers(0, 200),
    st.integers(1, 2000),
)
warmdowns = st.builds(
    lambda max_lr, frac, warmup, extra, ratio: WarmupCosine(
        max_lr, max_lr * frac, warmup, warmup + extra, max(1, round(ratio * (warmup + extra)))
    ),
    st.floats(1e-5, 1.0),
    st.floats(0.0, 1.0),
    st.integers(0, 200),
    st.integers(1, 2000),
    st.floats(0.01, 1.0),
)
schedules = st.one_of(cosines, warmdowns)


@given(schedules)
def test_warmup_is_linear_and_reaches_the_peak(s: WarmupCosine) -> None:
    for step in range(s.warmup_steps):
        assert s(step) == pytest.approx(s.max_lr * (step + 1) / s.warmup_steps)
        assert s(step) > 0  # the first step already learns
    if s.warmup_steps:
        assert s(s.warmup_steps - 1) == pytest.approx(s.max_lr)
    if s.warmdown_steps is None or s.warmdown_steps <= s.max_steps - s.warmup_steps:
        assert s(s.warmup_steps) == pytest.approx(s.max_lr)  # the decay starts at the peak


@given(schedules)
def test_decay_is_monotone_and_ends_at_the_floor(s: WarmupCosine) -> None:
    decay = [s(step) for step in range(s.warmup_steps, s.max_steps + 1)]
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(decay))
    assert all(s.min_lr - 1e-12 <= lr <= s.max_lr + 1e-12 for lr in decay)
    assert s(s.max_steps) == pytest.approx(s.min_lr)
    assert s(s.max_steps + 100) == pytest.approx(s.min_lr)  # flat after the end


@given(warmdowns)
def test_warmdown_holds_the_peak_then_falls_linearly(s: WarmupCosine) -> None:
    assert s.warmdown_steps is not None
    start = s.max_steps - s.warmdown_steps  # the first step below the peak is start + 1
    for step in range(s.warmup_steps, s.max_steps + 1):
        want = (
            s.max_lr
            if step <= start
            else s.min_lr + (s.max_lr - s.min_lr) * (s.max_steps - step) / s.warmdown_steps
        )
        assert s(step) == pytest.approx(want)
    drops = [s(k) - s(k + 1) for k in range(max(start, s.warmup_steps), s.max_steps)]
    assert all(d == pytest.approx(drops[0]) for d in drops)  # a straight line


@given(cosines)
def test_midpoint_of_the_cosine_is_halfway(s: WarmupCosine) -> None:
    span = s.max_steps - s.warmup_steps
    if span % 2 == 0:
        mid = s(s.warmup_steps + span // 2)
        assert mid == pytest.approx((s.max_lr + s.min_lr) / 2)


def test_known_values() -> None:
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(35, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(0, max_lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10) == pytest.approx(1.0)


def test_known_warmdown_values() -> None:
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=0, max_steps=10, warmdown_steps=4)
    assert [round(lr_at(k, **kw), 6) for k in range(11)] == [1, 1, 1, 1, 1, 1, 1, 0.775, 0.55, 0.325, 0.1]
