"""A key/value cache for rotary models whose window slides past the context without re-encoding.

Keys are stored already rotated by their *absolute* position (see ``rotary.py``): attention scores depend
only on the distance between query and key, so a key never has to be recomputed when the window moves.
Each layer's keys and values live in a ring of ``window`` slots, the token at absolute position ``p`` in slot
``p % window``; positions keep growing past ``window`` (the rotary tables grow with them).

Semantics, with or without the cache: every token attends to itself and the ``window - 1`` tokens before it
(sliding-window causal attention; while the sequence fits in the window this is ordinary causal attention).
A cached pass therefore equals a full forward over the whole sequence with that banded mask, within float
rounding. The cache owns its bookkeeping: :meth:`begin` plans a pass of ``T`` new tokens and returns the
attention mask for it, every layer calls :meth:`update` with its new keys/values, and :meth:`end` moves on.
"""

from __future__ import annotations

import torch


def window_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean attention mask, True = may attend: key position in (q - window, q], and (if ``key_valid``
    (B, K) is given) a real token. A query always sees itself, so no row is all-masked (a padding query's
    output is ignored anyway). Shape (B or 1, 1, T_q, T_k)."""
    q, k = q_pos[:, None], k_pos[None, :]
    allowed = (k <= q) & (k > q - window)
    if key_valid is None:
        return allowed[None, None]
    return ((allowed[None] & key_valid[:, None, :]) | (k == q)[None])[:, None]


class SlidingKVCache:
    """Keys and values of every layer for the last ``window`` tokens, plus which of them are padding.

    ``pos`` is the absolute position of the next token (= tokens seen so far).
    """

    def __init__(self, num_layers: int, batch_size: int, kv_heads: int, window: int, head_dim: int) -> None:
        self.shape = (num_layers, batch_size, kv_heads, window, head_dim)
        self.window = window
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.key_valid: torch.Tensor | None = None  # (B, window): whether the token in each slot is real
        self.has_padding = False
        self.pos = 0
        # The plan of the pass in progress (set by begin): new tokens, old slots to read, new slots to write.
        self._T = 0
        self._read: torch.Tensor | None = None  # slots of the still-visible cached keys, oldest first
        self._write: torch.Tensor | slice = slice(0, 0)  # where the (last) new keys go
        self._keep = 0  # how many of the new keys are stored (the last min(T, window))

    def reset(self) -> None:
        """Forget the cached tokens (buffers are kept and reused)."""
        self.pos = 0
        self.has_padding = False

    def begin(self, T: int, valid: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Plan a pass of ``T`` new tokens at positions ``pos .. pos + T - 1``, record which are real
        (``valid`` (B, T) bool, None = all), and return the pass's attention mask: None means plain causal
        attention with the queries as the last ``T`` keys, every one of them visible."""
        W, p = self.window, self.pos
        B = self.shape[1]
        if self.key_valid is None or self.key_valid.device != device:
            self.key_valid = torch.ones(B, W, dtype=torch.bool, device=device)
        new_valid = valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        self.has_padding = self.has_padding or not bool(new_valid.all())
        self._T = T
        q_pos = torch.arange(p, p + T, device=device)
        mask: torch.Tensor | None = None
        if p + T <= W:  # everything fits: slots are positions, the keys are read in order
            self._read, self._write, self._keep = None, slice(p, p + T), T
            self.key_valid[:, p : p + T] = new_valid
            if self.has_padding or (p > 0 and T > 1):
                k_pos = torch.arange(p + T, device=device)
                kv = self.key_valid[:, : p + T] if self.has_padding else None
                mask = window_mask(q_pos, k_pos, W, kv)
        elif T == 1:  # one token, window full: it replaces the oldest slot, every slot is then visible
            slot = p % W
            self._read, self._write, self._keep = None, slice(slot, slot + 1), 1
            self.key_valid[:, slot] = new_valid[:, 0]
            if self.has_padding:
                mask = self.key_valid[:, None, None, :]
        else:  # several tokens past the window: read the visible cached keys in order, then the new ones
            n_old = min(p, W - 1)
            old = torch.arange(p - n_old, p, device=device)
            self._read = old % W
            self._keep = min(T, W)
            self._write = torch.arange(p + T - self._keep, p + T, device=device) % W
            k_pos = torch.cat((old, q_pos))
            kv = torch.cat((self.key_valid[:, self._read], new_valid), 1) if self.has_padding else None
            mask = window_mask(q_pos, k_pos, W, kv)
            self.key_valid[:, self._write] = new_valid[:, T - self._keep :]
        return mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys/values (B, kv_heads, T, head_dim); return the keys/values the pass
        attends to (the mask from :meth:`begin` applies to them)."""
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            # Allocated lazily so the buffers take the dtype the layers produce (bf16 under autocast).
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        assert self.v is not None
        kb, vb = self.k[layer], self.v[layer]
        if self._read is not None:
            k_all = torch.cat((kb.index_select(2, self._read), k), 2)
            v_all = torch.cat((vb.index_select(2, self._read), v), 2)
        tail_k, tail_v = k[:, :, k.size(2) - self._keep :], v[:, :, v.size(2) - self._keep :]
        if isinstance(self._write, slice):
            kb[:, :, self._write] = tail_k
            vb[:, :, self._write] = tail_v
        else:
            kb.index_copy_(2, self._write, tail_k)
            vb.index_copy_(2, self._write, tail_v)
        if self._read is not None:
            return k_all, v_all
        if self.pos + self._T <= self.window:
            end = self.pos + self._T
            return kb[:, :, :end], vb[:, :, :end]
        return kb, vb

    def end(self) -> None:
        """The pass is done: its tokens are now cached."""
        self.pos += self._T
        self._T = 0
