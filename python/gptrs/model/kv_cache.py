"""The KV cache: keys and values of every layer for the last ``window`` tokens of each row, and the masks.

Generation runs the prompt once (the prefill) and then one token per step; each attention layer hands its
new keys/values to the cache (:meth:`KVCache.update`) and attends to what it gets back. The cache owns its
bookkeeping: :meth:`KVCache.begin` plans a pass (each new token's position and the attention mask),
:meth:`KVCache.end` moves on.

Rows are independent: ``lengths[b]`` counts the real tokens row ``b`` holds, and row ``b``'s token at
position ``p`` lives in slot ``p % window`` of a ring. Left padding is never stored, so a batch of prompts of
different lengths, or a request joining a running batch (:meth:`merge`, :meth:`select`), is just rows of
different lengths. Semantics, with or without the cache: each token attends to itself and the ``window - 1``
tokens before it. While a row fits in the window that is ordinary causal attention; past it the ring slides.
Rotary keys are stored rotated by their absolute position and scores depend only on distances, so they stay
valid as the window slides. Learned positions do not: such a model re-encodes its last window instead
(``generation.py``).

Two modes. The eager one keeps a host-side copy of the longest row, so a decode step attends to the used
slots only and needs no mask when every row has the same length (no host sync per step). The static one
(``static=True``, for a step captured as a CUDA graph in ``static_decode.py``) keeps every shape fixed:
writes go through tensor indices and attention covers all ``window`` slots under a mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(q_pos: Tensor, k_pos: Tensor, window: int, key_valid: Tensor | None = None) -> Tensor:
    """Boolean attention mask, True = may attend, for queries that are the last ``T_q`` of ``T_k`` keys in
    time order: a key no later than the query, less than ``window`` positions before it, and (with
    ``key_valid`` (B, T_k)) a real token. Positions are (T,) or (1, T) shared, or (B, T) per row. A query
    always sees itself, so no row is all-masked (a padding query's output is ignored anyway).
    Shape (B or 1, 1, T_q, T_k)."""
    T_q, T_k = q_pos.size(-1), k_pos.size(-1)
    q_col = torch.arange(T_k - T_q, T_k, device=q_pos.device)[:, None]
    k_col = torch.arange(T_k, device=q_pos.device)[None, :]
    allowed = (k_col <= q_col) & (k_pos[..., None, :] > q_pos[..., :, None] - window)
    if allowed.dim() == 2:
        allowed = allowed[None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    return (allowed | (k_col == q_col))[:, None]


def row_positions(valid: Tensor | None, T: int, device: torch.device, start: Tensor | None = None) -> Tensor:
    """The position of each new token in its row: (B, T), counting real tokens only (left padding gets the
    position of the first real token, harmlessly), after ``start`` (B,) tokens already cached; (1, T) when
    there is neither padding nor a cache."""
    if valid is None:
        pos = torch.arange(T, device=device)[None]
    else:
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    return pos if start is None else pos + start[:, None]


def previous_tokens(input_ids: Tensor, valid: Tensor | None, last: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each token's previous real token in its row (B, T), and each row's last real token (B,): what the
    bigram hash embedding (``model.bigram_buckets``) looks up. ``last`` (B,) is each row's token before
    this pass (-1, or None for all: the row starts here); a token with none before it gets -1. Padding
    (``valid`` False) is skipped wherever it is, so a row reads the same alone or padded in a batch."""
    B, T = input_ids.shape
    if last is None:
        last = torch.full((B,), -1, dtype=input_ids.dtype, device=input_ids.device)
    if valid is None:
        return torch.cat((last[:, None], input_ids[:, :-1]), 1), input_ids[:, -1]
    col = torch.where(valid, torch.arange(T, device=input_ids.device), -1)
    before = torch.cat((col.new_full((B, 1), -1), col[:, :-1]), 1).cummax(1).values  # latest real column
    prev = torch.where(before >= 0, input_ids.gather(1, before.clamp(min=0)), last[:, None])
    end = col.max(1).values
    new_last = torch.where(end >= 0, input_ids.gather(1, end.clamp(min=0)[:, None])[:, 0], last)
    return prev, new_last


class KVCache:
    """Keys and values of ``num_layers`` layers for ``batch_size`` rows of up to ``window`` tokens each."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        kv_heads: int,
        window: int,
        head_dim: int,
        *,
        static: bool = False,
    ) -> None:
        self.shape = (num_layers, batch_size, kv_heads, window, head_dim)
        self.window = window
        self.static = static
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.lengths: Tensor | None = None  # (B,) real tokens per row, on the cache's device
        self.last_token: Tensor | None = None  # (B,) each row's last token, -1: none (model.bigram_buckets)
        self.max_len = 0  # host copy of lengths.max() (eager mode)
        self.uniform = True  # every row has the same length: no mask is needed (eager mode)
        # The plan of the pass in progress (begin -> update per layer -> end).
        self._T = 0
        self._valid: Tensor | None = None  # (B, T) which new tokens are real; None: all
        self._slots: Tensor | None = None  # static/T=1: (B,) the slot each row writes
        self._views: list[tuple[Tensor, Tensor]] = []  # per-layer views of k, v (see _layer)
        self._views_of: Tensor | None = None
        # What window_mask needs: ("ordered", q_pos, k_pos, key_valid) for keys in time order (causal_mask's
        # arguments), or ("ring", q_pos (B, 1), used slots) for keys read from the ring's slots.
        self._plan: tuple = ()

    @property
    def batch_size(self) -> int:
        return self.shape[1]

    def allocate(self, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate the buffers now (else the first :meth:`update` does, in the dtype the layers produce):
        a captured step needs them to exist, and to stay, before the first prefill."""
        self.k = torch.zeros(self.shape, dtype=dtype, device=device)
        self.v = torch.zeros(self.shape, dtype=dtype, device=device)
        if self.lengths is None or self.lengths.device != device:
            self.lengths = torch.zeros(self.shape[1], dtype=torch.long, device=device)
        if self.last_token is None or self.last_token.device != device:
            self.last_token = torch.full((self.shape[1],), -1, dtype=torch.long, device=device)

    def reset(self) -> None:
        """Forget every row's tokens (the buffers are kept and reused)."""
        if self.lengths is not None:
            self.lengths.zero_()
        if self.last_token is not None:
            self.last_token.fill_(-1)
        self.max_len, self.uniform = 0, True

    def sync(self) -> None:
        """Refresh the host-side view of ``lengths`` (after static steps changed it on the device)."""
        if self.lengths is not None:
            self.max_len = int(self.lengths.max())
            self.uniform = bool((self.lengths == self.lengths[0]).all())

    @property
    def full(self) -> bool:
        """Whether some row fills the window (the next token makes it slide)."""
        return self.max_len >= self.window

    # ------------------------------------------------------------------ one pass

    def begin(self, T: int, valid: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Plan a pass of ``T`` new tokens per row (``valid`` (B, T) bool marks the real ones, left padding
        False; None = all real). Returns each new token's position in its row ((B, T) or (1, T)) and the
        pass's attention mask over the keys :meth:`update` returns (None: plain causal attention with the
        queries as the last ``T`` keys)."""
        if self.lengths is None or self.lengths.device != device:
            self.lengths = torch.zeros(self.shape[1], dtype=torch.long, device=device)
        self._T, self._valid = T, valid
        W = self.window
        if self.static:  # one token per row, every shape fixed, nothing read back to the host
            self._slots = self.lengths % W
            self._plan = ("ring", self.lengths[:, None], W)
            filled = torch.arange(W, device=device) < (self.lengths + 1).clamp(max=W)[:, None]
            return self.lengths[:, None], filled[:, None, None, :]
        if self.max_len == 0:  # a fresh cache: attend to the new keys only
            padded = valid is not None and not bool(valid.all())
            pos = row_positions(valid if padded else None, T, device)
            self._valid = valid if padded else None
            self._plan = ("ordered", pos, pos, self._valid)
            if not padded and T <= W:
                return pos, None
            return pos, causal_mask(pos, pos, W, valid if padded else None)
        if T == 1 and valid is None:  # the decoding hot loop
            end = min(self.max_len + 1, W)
            self._slots = self.lengths % W
            self._plan = ("ring", self.lengths[:, None], end)
            mask = None
            if not self.uniform:
                mask = (torch.arange(end, device=device) < (self.lengths + 1).clamp(max=W)[:, None])[
                    :, None, None
                ]
            return self.lengths[:, None], mask
        # Several new tokens after cached ones (or padded ones): the used slots, then the new keys.
        pos = row_positions(valid, T, device, self.lengths)
        used = min(self.max_len, W)
        slots = torch.arange(used, device=device)
        last = self.lengths[:, None] - 1
        slot_pos = last - (last - slots) % W  # the position each slot holds (newest token with p % W == s)
        slot_valid = slots[None] < self.lengths[:, None]
        new_valid = valid if valid is not None else torch.ones(pos.shape, dtype=torch.bool, device=device)
        k_pos = torch.cat((slot_pos.expand(pos.size(0), -1), pos), 1)
        key_valid = torch.cat((slot_valid, new_valid), 1)
        self._plan = ("ordered", pos, k_pos, key_valid)
        return pos, causal_mask(pos, k_pos, W, key_valid)

    def previous_tokens(self, input_ids: Tensor, valid: Tensor | None) -> Tensor:
        """The pass's new tokens' previous tokens (see :func:`previous_tokens`), the cached ones included;
        remembers each row's last token for the next pass (in place: a captured step keeps its buffer)."""
        if self.last_token is None or self.last_token.device != input_ids.device:
            self.last_token = torch.full((self.shape[1],), -1, dtype=torch.long, device=input_ids.device)
        prev, last = previous_tokens(input_ids, valid, self.last_token)
        self.last_token.copy_(last)
        return prev

    def window_mask(self, window: int) -> Tensor | None:
        """The mask of the pass in progress (after :meth:`begin`) for a layer that sees only the last
        ``window`` (< the cache's window) tokens (``model.window_pattern``): the cache keeps the longest
        window of every layer, and such a layer masks the older slots. None: no key is out of reach."""
        if self._plan[0] == "ordered":
            _, q_pos, k_pos, key_valid = self._plan
            if key_valid is None and q_pos.size(-1) <= window:
                return None
            return causal_mask(q_pos, k_pos, window, key_valid)
        _, q, used = self._plan  # q (B, 1): each row's new token, at its slot of the ring
        W = self.window
        slots = torch.arange(used, device=q.device)
        k_pos = q - (q - slots) % W  # the position each slot holds once the new token is written
        return ((slots < (q + 1).clamp(max=W)) & (k_pos > q - window))[:, None, None, :]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new keys/values (B, kv_heads, T, head_dim) and return the keys/values the pass
        attends to (the mask from :meth:`begin` applies to them)."""
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            assert not self.static, "a static cache must be allocated before its first pass"
            self.allocate(k.dtype, k.device)
        assert self.k is not None and self.v is not None and self.lengths is not None
        kb, vb = self._layer(layer)
        W, T = self.window, self._T
        if self.static or (T == 1 and self._valid is None and self.max_len > 0):
            assert self._slots is not None
            if not self.static and self.uniform:  # every row writes the same slot: a plain slice
                s = self.max_len % W
                kb[:, :, s] = k[:, :, 0]
                vb[:, :, s] = v[:, :, 0]
            else:
                rows = torch.arange(kb.size(0), device=kb.device)
                kb[rows, :, self._slots] = k[:, :, 0]
                vb[rows, :, self._slots] = v[:, :, 0]
            if self.static:
                return kb, vb
            end = min(self.max_len + 1, W)
            return kb[:, :, :end], vb[:, :, :end]
        if self.max_len == 0:
            self._store(kb, k)
            self._store(vb, v)
            return k, v
        used = min(self.max_len, W)
        k_all = torch.cat((kb[:, :, :used], k), 2)
        v_all = torch.cat((vb[:, :, :used], v), 2)
        self._store(kb, k)
        self._store(vb, v)
        return k_all, v_all

    def _layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """One layer's (k, v) buffers, views made once per allocation (a decode step asks for every layer)."""
        if self._views_of is not self.k:
            assert self.k is not None and self.v is not None
            self._views = list(zip(self.k.unbind(0), self.v.unbind(0), strict=True))
            self._views_of = self.k
        return self._views[layer]

    def _store(self, buf: Tensor, new: Tensor) -> None:
        """Write the last ``window`` real tokens of each row of ``new`` (B, kv_heads, T, head_dim) into their
        ring slots ``position % window``."""
        assert self.lengths is not None
        W, T = self.window, new.size(2)
        if self._valid is None and self.uniform:  # rows alike: slices
            first = max(0, T - W)  # only the last W tokens stay; they fill at most two runs of the ring
            s0 = (self.max_len + first) % W
            n = T - first
            head = min(n, W - s0)
            buf[:, :, s0 : s0 + head] = new[:, :, first : first + head]
            if head < n:
                buf[:, :, : n - head] = new[:, :, first + head :]
            return
        valid = self._valid if self._valid is not None else torch.ones(
            buf.size(0), T, dtype=torch.bool, device=buf.device
        )  # fmt: skip
        count = valid.long().cumsum(1)
        keep = valid & (count > count[:, -1:] - W)  # each row's last W real tokens
        rows, cols = keep.nonzero(as_tuple=True)
        slots = (self.lengths[rows] + count[rows, cols] - 1) % W
        buf[rows, :, slots] = new.transpose(1, 2)[rows, cols]

    def end(self) -> None:
        """The pass is done: its tokens are now cached."""
        assert self.lengths is not None
        if self.static:
            self.lengths.add_(1)
            return
        if self._valid is None:
            self.lengths.add_(self._T)
            self.max_len += self._T
        else:
            self.lengths.add_(self._valid.sum(1))
            self.sync()
        self._T, self._valid, self._slots, self._plan = 0, None, None, ()

    # ------------------------------------------------------------------ rows

    def select(self, rows: Tensor) -> KVCache:
        """A cache of these rows (a LongTensor of row indices), in that order: a finished request leaves."""
        out = KVCache(*self._dims(len(rows)), static=self.static)
        if self.k is not None and self.v is not None and self.lengths is not None:
            idx = rows.to(self.k.device)
            out.k, out.v = self.k.index_select(1, idx), self.v.index_select(1, idx)
            out.lengths = self.lengths.index_select(0, idx)
            if self.last_token is not None:
                out.last_token = self.last_token.index_select(0, idx.to(self.last_token.device))
            if len(rows):
                out.sync()
        return out

    def put(self, slots: Tensor, other: KVCache, rows: Tensor) -> None:
        """Copy rows ``rows`` of ``other`` into rows ``slots`` of this cache, in place: the buffers stay where
        they are, so a static cache under a captured step takes requests this way (the server's slots)."""
        if other.k is None or other.v is None or other.lengths is None:
            raise ValueError("KVCache.put: the cache to copy from holds no tokens (run a prefill first)")
        if self.k is None or self.v is None or self.lengths is None:
            raise ValueError("KVCache.put: allocate this cache first")
        slots = slots.to(self.k.device)
        rows = rows.to(other.k.device)
        self.k[:, slots] = other.k.index_select(1, rows).to(self.k.device, self.k.dtype)
        self.v[:, slots] = other.v.index_select(1, rows).to(self.v.device, self.v.dtype)
        self.lengths[slots] = other.lengths.index_select(0, rows).to(self.lengths.device)
        if other.last_token is not None:
            if self.last_token is None:
                self.last_token = torch.full_like(self.lengths, -1)
            self.last_token[slots] = other.last_token.index_select(0, rows).to(self.last_token.device)
        if not self.static:
            self.sync()

    @staticmethod
    def merge(caches: list[KVCache]) -> KVCache:
        """One cache holding the rows of ``caches`` one after the other: a request joins a running batch.
        Every cache must have been filled (its buffers allocated) and share the shape of a row."""
        first = caches[0]
        out = KVCache(*first._dims(sum(c.batch_size for c in caches)), static=first.static)
        ks = [c.k for c in caches]
        vs = [c.v for c in caches]
        ls = [c.lengths for c in caches]
        if any(t is None for t in ks) or any(t is None for t in ls):
            raise ValueError("KVCache.merge: every cache must hold tokens (run a prefill first)")
        out.k = torch.cat(ks, 1)  # type: ignore[arg-type]
        out.v = torch.cat(vs, 1)  # type: ignore[arg-type]
        out.lengths = torch.cat(ls)  # type: ignore[arg-type]
        if any(c.last_token is not None for c in caches):
            out.last_token = torch.cat(
                [c.last_token if c.last_token is not None else torch.full_like(c.lengths, -1) for c in caches]  # type: ignore[arg-type]
            )
        out.sync()
        return out

    def _dims(self, batch_size: int) -> tuple[int, int, int, int, int]:
        L, _, KV, W, D = self.shape
        return L, batch_size, KV, W, D
