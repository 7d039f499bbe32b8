"""Causal multi-head self-attention: the fused SDPA path and an explicit reference path.

Both paths compute softmax(q k^T / sqrt(head_dim) + mask) v per head. The default path calls
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA, the fused
flash kernel on CPU; no Triton). The reference path spells the same math out with an explicit mask and
softmax; tests check that the two agree.

Masks: ``attn_mask`` is None (plain causal attention, queries aligned to the *end* of the keys, which is
what a KV cache needs) or a boolean tensor broadcastable to (B, 1, T_q, T_k) where True means "may attend",
built by :func:`build_attention_mask` when some keys are padding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from gptrs.model.kv_cache import KVCache

ATTENTION_IMPLS = ("sdpa", "reference")


def build_attention_mask(key_valid: torch.Tensor, num_queries: int) -> torch.Tensor:
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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (one matmul for q, k and v)."""

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        dropout: float = 0.0,
        *,
        bias: bool = True,
        impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if embed_dim % heads != 0:
            raise ValueError(f"heads ({heads}) must divide embed_dim ({embed_dim})")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
        self.embed_dim = embed_dim
        self.heads = heads
        self.head_dim = embed_dim // heads
        self.dropout = dropout
        self.impl = impl
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)  # fused q, k, v
        self.c_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # output projection (residual branch)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.embed_dim, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)  # all keys so far, (B, heads, T_k, head_dim)
        dropout_p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            y = self._sdpa(q, k, v, attn_mask, dropout_p)
        else:
            y = self._reference(q, k, v, attn_mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _sdpa(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float
    ) -> torch.Tensor:
        T_q, T_k = q.size(2), k.size(2)
        if attn_mask is None and T_q != T_k and T_q > 1:
            # Several new queries after cached keys: SDPA's is_causal aligns to the top left, we need the
            # bottom right, so spell the mask out.
            attn_mask = build_attention_mask(torch.ones(1, T_k, dtype=torch.bool, device=q.device), T_q)
        if attn_mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        # T_q == T_k: ordinary causal attention; T_q == 1: one new token sees every cached key.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T_q > 1)

    @staticmethod
    def _reference(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float
    ) -> torch.Tensor:
        T_q, T_k = q.size(2), k.size(2)
        if attn_mask is None:
            attn_mask = build_attention_mask(torch.ones(1, T_k, dtype=torch.bool, device=q.device), T_q)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        att = att.float().masked_fill(~attn_mask, float("-inf"))
        att = F.softmax(att, dim=-1).to(v.dtype)
        att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
        return att @ v
