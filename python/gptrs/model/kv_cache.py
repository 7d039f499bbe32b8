"""A preallocated key/value cache for incremental decoding, and the attention masks over its keys.

Generation runs the prompt once (the prefill) and then one token per step. Each attention layer writes
that step's keys and values into fixed (B, heads, max_seq_len, head_dim) buffers allocated on the first
write, so a decode step does no allocation and no Python object churn beyond slicing views.

The cache also remembers which cached positions are left padding, and makes the mask that hides them
(:meth:`KVCache.mask`, :meth:`KVCache.decode_mask`). It stores keys as the model gives them and knows
nothing of positions: a model with learned absolute positions (GPT-2) re-runs a slid window after
:meth:`KVCache.reset`, one with rotary embeddings could keep its keys.
"""

from __future__ import annotations

import torch
from torch import Tensor


def build_attention_mask(key_valid: Tensor, num_queries: int) -> Tensor:
    """Boolean (B, 1, T_q, T_k) mask: causal, with the queries being the last ``num_queries`` keys, and
    padding keys (``key_valid`` False) hidden. Each query may always see itself, so that a padding query
    never has an all-masked row (which would give NaN); its output is ignored anyway."""
    num_keys = key_valid.size(1)
    q_pos = torch.arange(num_keys - num_queries, num_keys, device=key_valid.device)
    k_pos = torch.arange(num_keys, device=key_valid.device)
    causal = k_pos[None, :] <= q_pos[:, None]  # (T_q, T_k)
    mask = causal[None] & key_valid[:, None, :]
    mask |= k_pos[None, None, :] == q_pos[None, :, None]
    return mask[:, None]


class KVCache:
    """Keys and values of every layer for the tokens seen so far, plus which of them are padding.

    ``pos`` counts the cached positions. During one forward pass each layer adds its keys/values at
    ``pos`` (:meth:`update`; :meth:`write` for one token per row), and the model calls :meth:`advance`
    once the pass is done. Before the pass, :meth:`mask` (or :meth:`decode_mask`) records which new
    positions are padding and returns the attention mask the pass needs.
    """

    def __init__(self, num_layers: int, batch_size: int, heads: int, max_seq_len: int, head_dim: int) -> None:
        self.shape = (num_layers, batch_size, heads, max_seq_len, head_dim)
        self.max_seq_len = max_seq_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.layers: list[tuple[Tensor, Tensor]] = []  # per-layer (k, v) views of the buffers
        # key_valid[b, t] is False where position t of row b is left padding.
        self.key_valid: Tensor | None = None
        self.has_padding = False  # whether any key_valid entry was ever False (else no mask is needed)
        self.pos = 0

    @property
    def full(self) -> bool:
        """Whether every position is taken (the next token needs a slid window)."""
        return self.pos >= self.max_seq_len

    def reset(self) -> None:
        """Forget the cached tokens (buffers are kept and reused)."""
        self.pos = 0

    def advance(self, num_tokens: int) -> None:
        """The forward pass that wrote ``num_tokens`` positions into every layer is done."""
        self.pos += num_tokens

    # ------------------------------------------------------------------ keys and values

    def allocate(self, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate the buffers now (else the first :meth:`update` does, in the dtype the layers produce):
        a captured decode step needs them to exist, and to stay, before the first prefill."""
        self.k = torch.zeros(self.shape, dtype=dtype, device=device)
        self.v = torch.zeros(self.shape, dtype=dtype, device=device)
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0), strict=True))

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this pass's keys/values (B, heads, T, head_dim) of one layer after the cached ones; return
        views of all of them, (B, heads, pos + T, head_dim)."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_seq_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > max_seq_len {self.max_seq_len}")
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            # Allocated lazily so the buffers take the dtype the layers actually produce (bf16 under autocast).
            self.allocate(k.dtype, k.device)
        assert self.k is not None and self.v is not None
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """One token per row, k and v (B, heads, head_dim), into slot ``pos`` of one layer (after a prefill
        by :meth:`update`); return views of every key/value up to it. The decoding hot loop: the layer's
        buffers are written through their per-layer views, with no checks."""
        t = self.pos
        k_cache, v_cache = self.layers[layer]
        k_cache[:, :, t] = k
        v_cache[:, :, t] = v
        return k_cache[:, :, : t + 1], v_cache[:, :, : t + 1]

    # ------------------------------------------------------------------ padding and masks

    def mask(self, num_new: int, attention_mask: Tensor | None = None) -> Tensor | None:
        """Record which of the next ``num_new`` positions are real tokens (``attention_mask`` (B, num_new):
        1/True = token, 0/False = left padding; None: all tokens) and return the mask their queries need
        over every key so far: None when no key is padding (plain causal attention), else
        :func:`build_attention_mask`'s (B, 1, num_new, pos + num_new)."""
        if attention_mask is not None:
            valid = attention_mask.bool()
            if self.key_valid is None or self.key_valid.device != valid.device:
                self.key_valid = torch.ones(
                    self.shape[1], self.max_seq_len, dtype=torch.bool, device=valid.device
                )
            self.key_valid[:, self.pos : self.pos + num_new] = valid
            self.has_padding = self.has_padding or not bool(valid.all())
        elif self.key_valid is None:
            return None  # no position was ever marked: no padding
        else:
            self.key_valid[:, self.pos : self.pos + num_new] = True
        keys = self.key_valid[:, : self.pos + num_new]
        return None if bool(keys.all()) else build_attention_mask(keys, num_new)

    def decode_mask(self) -> Tensor | None:
        """:meth:`mask` for one real token per row at ``pos``, cheaper (no check of every key, no sync): the
        (B, 1, 1, pos + 1) mask of the keys it may see, or None when no key was ever padding."""
        if self.key_valid is None:
            return None
        self.key_valid[:, self.pos] = True
        return self.key_valid[:, None, None, : self.pos + 1] if self.has_padding else None
