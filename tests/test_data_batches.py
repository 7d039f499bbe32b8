"""Batch samplers: window shape and shift, determinism across a save/restore of the state, DDP ranks,
epoch coverage, and the fixed evaluation windows. Tokens here are synthetic (``arange`` makes every window
identifiable by its first token)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptrs.data import EpochBatches, EvalBatches, RandomBatches
from gptrs.errors import DataError


def _tokens(n: int, seed: int = 0, vocab: int = 500) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def _starts(x: torch.Tensor) -> list[int]:
    """For arange tokens, a row's first token is its window's start offset."""
    return x[:, 0].tolist()


def _roundtrip(state: dict) -> dict:
    """The state must survive JSON and torch.save/torch.load(weights_only=True) unchanged."""
    assert json.loads(json.dumps(state)) == state
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded == state
    return loaded


def test_random_batches_are_shifted_windows_of_the_tokens() -> None:
    tokens = np.arange(5000, dtype=np.uint32)
    x, y = next(RandomBatches(tokens, 8, 32, seed=3))
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        start = row_x[0]
        assert row_x == list(range(start, start + 32))
        assert row_y == list(range(start + 1, start + 33))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(10, 3000),
    seq_len=st.integers(1, 9),
    batch_size=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    before=st.integers(0, 6),
    after=st.integers(1, 6),
)
def test_random_batches_resume_exactly(
    n: int, seq_len: int, batch_size: int, seed: int, before: int, after: int
):
    tokens = _tokens(n, seed % 7)
    run = RandomBatches(tokens, batch_size, seq_len, seed=seed)
    for _ in range(before):
        next(run)
    state = _roundtrip(run.state_dict())
    expected = [next(run) for _ in range(after)]
    resumed = RandomBatches(tokens, batch_size, seq_len, seed=seed)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(resumed) for _ in range(after)), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_random_batches_differ_by_rank_and_seed_and_step() -> None:
    tokens = np.arange(100_000, dtype=np.uint32)
    a = RandomBatches(tokens, 16, 16, seed=1, rank=0)
    b = RandomBatches(tokens, 16, 16, seed=1, rank=1)
    c = RandomBatches(tokens, 16, 16, seed=2, rank=0)
    first = _starts(next(a)[0])
    assert first != _starts(next(b)[0])
    assert first != _starts(next(c)[0])
    assert first != _starts(next(a)[0])
    # Rank 0's saved state restores another rank at the same step, keeping that rank's own stream.
    b2 = RandomBatches(tokens, 16, 16, seed=1, rank=1)
    b2.load_state_dict(a.state_dict())  # a has drawn 2 batches
    b3 = RandomBatches(tokens, 16, 16, seed=1, rank=1)
    next(b3), next(b3)
    assert _starts(next(b2)[0]) == _starts(next(b3)[0])


def test_random_batches_reach_both_ends() -> None:
    tokens = np.arange(40, dtype=np.uint16)
    rb = RandomBatches(tokens, 64, 7, seed=0)
    starts = {s for _ in range(20) for s in _starts(next(rb)[0])}
    assert starts == set(range(0, 40 - 8 + 1))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 400),
    seq_len=st.integers(1, 8),
    batch_size=st.integers(1, 7),
    world_size=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_epochs_cover_each_window_once_per_pass(
    n: int, seq_len: int, batch_size: int, world_size: int, seed: int
):
    tokens = np.arange(n, dtype=np.uint32)
    num_windows = (n - 1) // seq_len
    if num_windows == 0:
        with pytest.raises(DataError):
            EpochBatches(tokens, batch_size, seq_len, seed=seed)
        return
    samplers = [
        EpochBatches(tokens, batch_size, seq_len, seed=seed, epochs=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    per_pass: list[list[int]] = [[], []]
    for s in samplers:
        for epoch in range(2):
            for _ in range(s.batches_per_epoch):
                assert s.epoch == epoch
                x, y = next(s)
                assert torch.equal(x[:, 1:], y[:, :-1])
                per_pass[epoch].extend(_starts(x))
        assert s.epoch == 2
        with pytest.raises(StopIteration):
            next(s)
    expected = [k * seq_len for k in range(num_windows)]
    for starts in per_pass:
        # Every window once; DDP padding repeats at most world_size - 1 windows.
        assert sorted(set(starts)) == expected
        assert len(starts) - num_windows == (-num_windows) % world_size
    if num_windows >= 4:
        assert per_pass[0] != per_pass[1]  # a new order each pass


def test_epochs_resume_mid_pass_and_drop_last() -> None:
    tokens = np.arange(1001, dtype=np.uint16)
    run = EpochBatches(tokens, 3, 10, seed=5, epochs=3)
    assert run.num_windows == 100 and run.batches_per_epoch == 34 and len(run) == 102
    for _ in range(40):
        next(run)
    state = _roundtrip(run.state_dict())
    rest = [_starts(x) for x, _ in run]
    resumed = EpochBatches(tokens, 3, 10, seed=5, epochs=3)
    resumed.load_state_dict(state)
    assert [_starts(x) for x, _ in resumed] == rest
    assert len(rest) == 102 - 40

    dropped = EpochBatches(tokens, 3, 10, seed=5, epochs=1, drop_last=True)
    shapes = {tuple(x.shape) for x, _ in dropped}
    assert shapes == {(3, 10)} and dropped.batches_per_epoch == 33


def test_eval_batches_fixed_and_capped() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    ev = EvalBatches(tokens, 4, 10, max_tokens=None)
    assert ev.num_windows == 99 and len(ev) == 25
    first = [(x.clone(), y.clone()) for x, y in ev]
    second = list(ev)
    assert len(first) == 25
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert [s for x, _ in first for s in _starts(x)] == list(range(0, 990, 10))
    assert np.array_equal(ev.targets(), np.arange(1, 991))
    capped = EvalBatches(tokens, 4, 10, max_tokens=95)
    assert capped.num_windows == 9 and len(capped) == 3
    shards = [ev.shard(r, 2) for r in range(2)]
    got = sorted(s for sh in shards for x, _ in sh for s in _starts(x))
    assert got == list(range(0, 990, 10))


def test_capped_eval_windows_spread_over_the_whole_split() -> None:
    """A cap takes windows from all over the validation tokens, not just their start (whose documents, in
    source order, need not be typical)."""
    tokens = np.arange(1000, dtype=np.uint16)
    capped = EvalBatches(tokens, 4, 10, max_tokens=95)
    starts = [s for x, _ in capped for s in _starts(x)]
    assert starts == [0, 110, 220, 330, 440, 550, 660, 770, 880]
    assert np.array_equal(capped.targets(), np.concatenate([np.arange(s + 1, s + 11) for s in starts]))


@given(st.integers(11, 5000), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 6000)))
def test_eval_windows_are_aligned_distinct_and_span_the_split(n_tokens: int, seq_len: int, cap) -> None:
    tokens = np.arange(n_tokens, dtype=np.int64)
    if n_tokens < seq_len + 1:
        return
    ev = EvalBatches(tokens, 3, seq_len, max_tokens=cap)
    total = (n_tokens - 1) // seq_len
    starts = [s for x, _ in ev for s in _starts(x)]
    assert len(starts) == ev.num_windows == (total if cap is None else min(total, max(1, cap // seq_len)))
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(s % seq_len == 0 and s + seq_len + 1 <= n_tokens for s in starts)
    # evenly spread: the last window lies in the last 1/num_windows of the split
    assert starts[-1] >= (total - total // len(starts) - 1) * seq_len


def test_too_few_tokens_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"fewer than one window of max_seq_len \+ 1 = 11"):
        RandomBatches(np.arange(10, dtype=np.uint16), 2, 10, seed=0)
    with pytest.raises(DataError, match="validation split has 5 tokens"):
        EvalBatches(np.arange(5, dtype=np.uint16), 2, 10)
    RandomBatches(np.arange(11, dtype=np.uint16), 2, 10, seed=0)  # exactly one window is enough


def test_memmap_tokens_work(tmp_path) -> None:
    path = tmp_path / "t.bin"
    np.arange(3000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = next(RandomBatches(tokens, 4, 16, seed=0))
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert all(row == list(range(row[0], row[0] + 16)) for row in x.tolist())
