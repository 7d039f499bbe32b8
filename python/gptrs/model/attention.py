"""Causal multi-head self-attention (nanoGPT's ``CausalSelfAttention``), with a KV cache for generation.

Both implementations compute softmax(q k^T / sqrt(head_dim) + mask) v per head. "sdpa" (the default) calls
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA, the fused
flash kernel on CPU; no Triton), and over a whole sequence goes through ``kernels.causal_attention``, which
picks a faster kernel for CPU training itself. "reference" spells the same math out with an explicit mask
and softmax; tests check that the two agree.

Masks: ``attn_mask`` is None (plain causal attention, queries aligned to the *end* of the keys, which is
what a KV cache needs) or a boolean tensor broadcastable to (B, 1, T_q, T_k) where True means "may attend",
built by :func:`~gptrs.model.kv_cache.build_attention_mask` when some keys are padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptrs.config import ModelConfig
from gptrs.model import kernels
from gptrs.model.kernels import Linear
from gptrs.model.kv_cache import KVCache, build_attention_mask


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (one matmul for q, k and v)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.c_attn = Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.bias)  # fused q, k, v
        self.c_proj = Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)  # output projection (residual)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.embed_dim = cfg.embed_dim
        self.heads = cfg.heads
        self.head_dim = cfg.embed_dim // cfg.heads
        self.dropout = cfg.dropout
        self.flash = cfg.attention == "sdpa"  # else the explicit reference math
        self.layer_idx = layer_idx  # this layer's slot in a KV cache

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, kv_cache: KVCache | None = None) -> Tensor:
        B, T, C = x.size()
        qkv = self.c_attn(x)
        dropout_p = self.dropout if self.training else 0.0
        if self.flash and attn_mask is None and kv_cache is None:
            y = kernels.causal_attention(qkv, self.heads, dropout_p)  # (B, T, C), heads side by side
            return self.resid_dropout(self.c_proj(y))
        q, k, v = qkv.split(self.embed_dim, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # all keys so far, (B, heads, T_k, head_dim)
        y = self._attend(q, k, v, attn_mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def decode(self, x: Tensor, kv_cache: KVCache, attn_mask: Tensor | None) -> Tensor:
        """One new token per row during cached generation: x (B, C) -> (B, C). Its key and value go into the
        cache (:meth:`KVCache.write`) and it attends to every cached one (``attn_mask``, (B, 1, 1, T_k) bool,
        hides padding). The same math as :meth:`forward` on a (B, 1, C) input with the cache, with fewer
        tensor ops (no reshapes of a time axis of length 1): decoding is a chain of small ops, where each
        one's fixed cost adds up."""
        B = x.size(0)
        qkv = self.c_attn(x).view(B, 3, self.heads, self.head_dim)
        k, v = kv_cache.write(self.layer_idx, qkv[:, 1], qkv[:, 2])
        y = self._attend(qkv[:, 0, :, None], k, v, attn_mask, self.dropout if self.training else 0.0)
        y = self.c_proj(y.view(B, -1))
        return self.resid_dropout(y) if self.training else y

    def decode_static(
        self, x: Tensor, k_cache: Tensor, v_cache: Tensor, slot: Tensor, mask: Tensor
    ) -> Tensor:
        """:meth:`decode` with static shapes, for a captured (CUDA graph) decode step: the new key and value go
        into slot ``slot`` (a (1,) tensor, not a Python int) of this layer's whole buffers ``k_cache``,
        ``v_cache`` (B, heads, max_seq_len, head_dim), and the query attends to every slot, ``mask``
        ((B, 1, 1, max_seq_len) bool) hiding the unused ones and padding."""
        B = x.size(0)
        qkv = self.c_attn(x).view(B, 3, self.heads, self.head_dim)
        k_cache.index_copy_(2, slot, qkv[:, 1, :, None].to(k_cache.dtype))
        v_cache.index_copy_(2, slot, qkv[:, 2, :, None].to(v_cache.dtype))
        y = self._attend(qkv[:, 0, :, None], k_cache, v_cache, mask, 0.0)
        return self.c_proj(y.view(B, -1))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
        """softmax(q k^T / sqrt(head_dim) + mask) v for q (B, heads, T_q, d) against k, v (B, heads, T_k, d),
        the queries being the last T_q positions."""
        T_q, T_k = q.size(2), k.size(2)
        if self.flash:
            if attn_mask is None and T_q != T_k and T_q > 1:
                # Several new queries after cached keys: SDPA's is_causal aligns to the top left, we need the
                # bottom right, so spell the mask out.
                attn_mask = build_attention_mask(torch.ones(1, T_k, dtype=torch.bool, device=q.device), T_q)
            if attn_mask is not None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
            # T_q == T_k: ordinary causal attention; T_q == 1: one new token sees every cached key.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T_q > 1)
        # reference: the same math, spelled out
        if attn_mask is None:
            attn_mask = build_attention_mask(torch.ones(1, T_k, dtype=torch.bool, device=q.device), T_q)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        att = att.float().masked_fill(~attn_mask, float("-inf"))
        att = F.softmax(att, dim=-1).to(v.dtype)
        att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
        return att @ v
