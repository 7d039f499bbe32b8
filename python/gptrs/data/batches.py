"""Batch samplers over a flat token array: random windows, shuffled epochs, and fixed evaluation windows.

A window is ``seq_len + 1`` consecutive tokens ``w``; the model reads ``x = w[:-1]`` and predicts
``y = w[1:]``. Every sampler yields ``(x, y)`` int64 tensors of shape ``(B, seq_len)`` on the target device.

Randomness is counter-based: batch ``n`` of rank ``r`` is drawn from a generator seeded with
``(seed, r, n)``, so the whole sampler state is a couple of integers. A run resumed from ``state_dict()``
draws exactly the batches the uninterrupted run would have drawn, and each DDP rank draws its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from gptrs.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


def _to_device(windows: np.ndarray, device: torch.device) -> Batch:
    """(B, T+1) token windows -> contiguous int64 (x, y); pinned + non_blocking on CUDA, zero extra copies on CPU."""
    x = torch.from_numpy(windows[:, :-1].astype(np.int64))  # astype makes the one contiguous copy we need
    y = torch.from_numpy(windows[:, 1:].astype(np.int64))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        x, y = x.to(device), y.to(device)
    return x, y


def _check(tokens: np.ndarray, batch_size: int, seq_len: int, what: str) -> None:
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a flat array, got shape {tokens.shape}")
    if len(tokens) < seq_len + 1:
        raise DataError(
            f"the {what} split has {len(tokens)} tokens, fewer than one window of max_seq_len + 1 = {seq_len + 1}"
        )


class RandomBatches:
    """Infinite stream of batches of random windows (starts uniform over the whole token array)."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        seed: int,
        rank: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        _check(tokens, batch_size, seq_len, "training")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.device = torch.device(device)
        self.batches = 0  # batches drawn so far: the whole sampler state
        self._windows = sliding_window_view(tokens, seq_len + 1)  # a view: no copy of the tokens

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng([self.seed % 2**64, self.rank, self.batches])  # seeds must be >= 0
        starts = rng.integers(0, len(self._windows), size=self.batch_size)
        self.batches += 1
        return _to_device(self._windows[starts], self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "random", "seed": self.seed, "rank": self.rank, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["batches"]`` batches. The seed and rank stay this sampler's own, so rank 0's
        saved state restores every rank of a DDP run (all ranks draw the same number of batches)."""
        if state.get("kind") != "random":
            raise ValueError(f"not a RandomBatches state: {state.get('kind')!r}")
        self.batches = int(state["batches"])


class EpochBatches:
    """Shuffled, non-overlapping windows: each pass (epoch) visits every window once, in a new order.

    Window ``k`` is ``tokens[k*T : k*T + T + 1]`` (consecutive windows share one boundary token, so every token
    but the first is a target exactly once per pass). Each epoch's order is a permutation seeded with
    ``(seed, epoch)``, the same on every rank; rank ``r`` of ``world_size`` takes every ``world_size``-th
    window (padded by wrapping around, as ``DistributedSampler`` does, so all ranks take the same number of
    steps). The last batch of a pass may be smaller unless ``drop_last``. Stops after ``epochs`` passes
    (never, if ``epochs`` is None); ``.epoch`` counts the completed passes.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        seed: int,
        epochs: int | None = 1,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        _check(tokens, batch_size, seq_len, "training")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.num_windows = (len(tokens) - 1) // seq_len
        self.windows_per_rank = -(-self.num_windows // world_size)
        n = self.windows_per_rank
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the training split gives {n} windows per rank, fewer than one batch of {batch_size} (drop_last)"
            )
        self.epoch = 0  # completed passes
        self.batch = 0  # batches drawn in the current pass
        self._order: np.ndarray | None = None  # this rank's windows for self.epoch

    @property
    def total_batches(self) -> int | None:
        """Batches in all ``epochs`` passes (None when unbounded)."""
        return None if self.epochs is None else self.epochs * self.batches_per_epoch

    def __len__(self) -> int:
        if self.total_batches is None:
            raise TypeError("EpochBatches with epochs=None is unbounded")
        return self.total_batches

    def _rank_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed % 2**64, epoch]).permutation(self.num_windows)
        pad = self.windows_per_rank * self.world_size - self.num_windows
        if pad:
            perm = np.concatenate([perm, np.resize(perm, pad)])
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> Batch:
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        if self._order is None:
            self._order = self._rank_order(self.epoch)
        idx = self._order[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        starts = idx * self.seq_len
        windows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch += 1
            self.batch = 0
            self._order = None
        return _to_device(windows, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "epochs",
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "batch": self.batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "epochs":
            raise ValueError(f"not an EpochBatches state: {state.get('kind')!r}")
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self._order = None


class EvalBatches:
    """A fixed list of validation batches: the non-overlapping windows of the validation tokens, or, capped at
    ``max_tokens`` targets, that many of them spread evenly over the whole split. No randomness, so losses are
    comparable across runs and resumes. Re-iterable.

    Spread, not the first ``max_tokens``: documents arrive in source order, and a prefix of them can be far
    from typical. The built-in corpus's first 131,072 validation tokens were the alphabetically first files,
    a third of them the ``encodings/`` codec tables; their loss was ~0.55 below the training loss at step 300.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        max_tokens: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        _check(tokens, batch_size, seq_len, "validation")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = torch.device(device)
        total = (len(tokens) - 1) // seq_len
        n = total if max_tokens is None else min(total, max(1, max_tokens // seq_len))
        self.num_windows = n
        self._starts = (np.arange(n) * total // n) * seq_len  # every window when n == total

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        offsets = np.arange(self.seq_len + 1)
        for i in range(0, self.num_windows, self.batch_size):
            starts = self._starts[i : i + self.batch_size]
            yield _to_device(self.tokens[starts[:, None] + offsets], self.device)

    def targets(self) -> np.ndarray:
        """All target tokens the batches cover, in order (for baselines such as the unigram loss)."""
        return self.tokens[self._starts[:, None] + np.arange(1, self.seq_len + 1)].reshape(-1)

    def shard(self, rank: int, world_size: int) -> EvalBatches:
        """This rank's share of the windows (every ``world_size``-th), for evaluating in parallel under DDP;
        the caller sums losses and counts across ranks."""
        out = EvalBatches.__new__(EvalBatches)
        out.__dict__.update(self.__dict__)
        out._starts = self._starts[rank::world_size]
        out.num_windows = len(out._starts)
        return out
