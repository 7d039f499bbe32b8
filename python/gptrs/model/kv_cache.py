"""A preallocated key/value cache for incremental decoding.

Generation runs the prompt once (the prefill) and then one token per step. Each attention layer appends
that step's keys and values to fixed (B, heads, max_seq_len, head_dim) buffers allocated on the first
write, so a decode step does no allocation and no Python object churn beyond slicing views.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for the tokens seen so far, plus which of them are padding.

    ``pos`` counts the cached positions. Layers call :meth:`update` in order during one forward pass; the
    model calls :meth:`advance` once that pass is done.
    """

    def __init__(self, num_layers: int, batch_size: int, heads: int, max_seq_len: int, head_dim: int) -> None:
        self.shape = (num_layers, batch_size, heads, max_seq_len, head_dim)
        self.max_seq_len = max_seq_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per-layer (k, v) views of the buffers
        # key_valid[b, t] is False where position t of row b is left padding.
        self.key_valid: torch.Tensor | None = None
        self.has_padding = False  # whether any key_valid entry was ever False (else no mask is needed)
        self.pos = 0

    def reset(self) -> None:
        """Forget the cached tokens (buffers are kept and reused)."""
        self.pos = 0

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's keys/values of one layer after the cached ones; return views of all of them."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_seq_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > max_seq_len {self.max_seq_len}")
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            # Allocated lazily so the buffers take the dtype the layers actually produce (bf16 under autocast).
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
            self.layers = list(zip(self.k.unbind(0), self.v.unbind(0), strict=True))
        assert self.v is not None
        self.k[layer_idx, :, :, self.pos : end] = k
        self.v[layer_idx, :, :, self.pos : end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]

    def set_valid(self, valid: torch.Tensor) -> None:
        """Record which of the next ``valid.size(1)`` positions are real tokens (True) or padding."""
        if self.key_valid is None or self.key_valid.device != valid.device:
            self.key_valid = torch.ones(
                self.shape[1], self.max_seq_len, dtype=torch.bool, device=valid.device
            )
        self.key_valid[:, self.pos : self.pos + valid.size(1)] = valid
        self.has_padding = self.has_padding or not bool(valid.all())

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens
