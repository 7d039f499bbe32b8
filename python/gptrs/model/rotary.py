"""Rotary position embeddings (RoPE, Su et al. 2021) in nanochat's / Hugging Face NanoChat's convention.

Each head's vector is split into two halves ``x1, x2`` (not interleaved pairs); pair ``i`` is rotated by the
angle ``pos * theta ** (-2i / head_dim)``:

    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin

(the same as ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(x2, -x1)``, the sign convention of
``transformers``' NanoChat). A query at position ``i`` and a key at position ``j`` then score
``q R(i)^T R(j) k = q R(j - i) k``: only the distance counts, which is what lets a KV cache keep keys
rotated by their absolute position and slide its window past the context without re-encoding anything.

The cos/sin tables are computed in float64 (angles of large positions keep their precision) and stored in
float32, grown on demand (doubling), so any position can be asked for, also beyond ``max_seq_len``.
"""

from __future__ import annotations

import torch


class RotaryTables:
    """cos/sin of every (position, frequency) pair, per device, grown lazily to cover the positions asked for."""

    def __init__(self, head_dim: int, theta: float, initial_positions: int = 1024) -> None:
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        self.theta = float(theta)
        self.initial_positions = max(1, initial_positions)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        # Outgrown tables stay alive: a captured CUDA graph may still read the one it was captured with.
        self._outgrown: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _build(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.theta ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
        return angles.cos().float().to(device), angles.sin().float().to(device)

    def table(self, num_positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (>= num_positions, head_dim / 2) float32 on ``device``."""
        cached = self._tables.get(device)
        if cached is None or cached[0].size(0) < num_positions:
            n = cached[0].size(0) if cached is not None else self.initial_positions
            while n < num_positions:
                n *= 2
            if device in self._tables:
                self._outgrown.append(self._tables[device])
            cached = self._build(n, device)
            self._tables[device] = cached
        return cached

    def at(
        self, positions: torch.Tensor, device: torch.device, dtype: torch.dtype, limit: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for integer ``positions`` (T,), (1, T) or (B, T), shaped to broadcast against
        (B, T, heads, head_dim / 2) halves. ``limit`` bounds the positions from above (exclusive), as the
        caller knows it without reading the tensor (no host sync); None: the tables already cover them (a
        captured decode step, which grew them beforehand with :meth:`table`)."""
        cos, sin = self.table(limit or 1, device) if limit is not None else self._tables[device]
        return cos[positions].unsqueeze(-2).to(dtype), sin[positions].unsqueeze(-2).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, T, heads, head_dim) by the angles whose cos/sin are given (see :meth:`RotaryTables.at`)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
