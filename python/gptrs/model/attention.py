"""Causal self-attention (nanoGPT's ``CausalSelfAttention``) with the model's switches and the KV cache.

One fused projection makes queries, keys and values (``c_attn``; with grouped-query attention fewer key/value
heads than query heads). Rotary positions rotate queries and keys; QK-norm then RMS-normalises them, which
keeps the attention logits bounded (nanochat's order; a rotation keeps the norm anyway). Attention is
softmax(q k^T / sqrt(head_dim) + mask) v per head:

- "sdpa" (the default): ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on CUDA, the fused flash kernel on CPU; no Triton); over a whole sequence through
  ``kernels.causal_attention``, which picks a faster kernel for CPU training itself;
- "reference": the same math spelled out with an explicit mask and softmax; tests check that they agree.

Masks: ``attn_mask`` is None (plain causal attention with the queries as the *last* keys, which is what a
KV cache needs) or a boolean tensor broadcastable to (B, 1, T_q, T_k), True = may attend, from
``kv_cache.causal_mask`` when keys are padding or the window slides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptrs.config import ModelConfig
from gptrs.model import kernels
from gptrs.model.kernels import Linear
from gptrs.model.kv_cache import KVCache, causal_mask
from gptrs.model.rotary import apply_rotary

RMS_EPS = 1e-6  # transformers' NanoChatConfig.rms_norm_eps, so exported models compute the same


def value_embed_table(cfg: ModelConfig, layer_idx: int) -> int | None:
    """Which of the ``model.value_embeds`` tables layer ``layer_idx`` mixes into its values (None: none):
    table i in layer i and in layer num_layers - N + i, as modded-nanogpt (the first and last N layers)."""
    n, last = cfg.value_embeds, cfg.num_layers - cfg.value_embeds
    if layer_idx < n:
        return layer_idx
    return layer_idx - last if n and layer_idx >= last else None


def rms_norm(x: Tensor) -> Tensor:
    """RMSNorm without a learned scale: x / sqrt(mean(x^2) + eps) over the last dimension."""
    return F.rms_norm(x, (x.size(-1),), eps=RMS_EPS)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (one matmul for q, k and v)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        assert cfg.kv_heads is not None
        self.heads, self.kv_heads = cfg.heads, cfg.kv_heads
        self.head_dim = cfg.embed_dim // cfg.heads
        # widths of q, k, v inside c_attn (Muon orthogonalises each on its own: training/muon.py)
        self.qkv_split = (
            cfg.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.kv_heads * self.head_dim,
        )
        self.c_attn = Linear(cfg.embed_dim, sum(self.qkv_split), bias=bool(cfg.bias))
        self.c_proj = Linear(
            cfg.heads * self.head_dim, cfg.embed_dim, bias=bool(cfg.bias)
        )  # into the residual
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.qk_norm = bool(cfg.qk_norm)
        self.flash = cfg.attention == "sdpa"  # else the explicit reference math
        self.layer_idx = layer_idx  # this layer's slot in a KV cache
        # model.value_embeds: v = a v + b ve, (a, b) learned, 0.5 each at first (modded-nanogpt)
        self.ve_table = value_embed_table(cfg, layer_idx)
        self.ve_lambdas = nn.Parameter(torch.full((2,), 0.5)) if self.ve_table is not None else None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        ve: Tensor | None = None,
    ) -> Tensor:
        """``ve`` (B, T, kv_heads * head_dim): this layer's value embedding of the tokens, if it has one."""
        B, T, _ = x.size()
        qkv = self.c_attn(x)
        if ve is not None:
            assert self.ve_lambdas is not None
            qk, v = qkv.split((self.qkv_split[0] + self.qkv_split[1], self.qkv_split[2]), dim=2)
            a, b = self.ve_lambdas.to(v.dtype)
            qkv = torch.cat((qk, a * v + b * ve.to(v.dtype)), -1)
        dropout_p = self.dropout if self.training else 0.0
        whole = self.flash and attn_mask is None and kv_cache is None  # a whole causal sequence
        if whole and rope is None and not self.qk_norm:
            y = kernels.causal_attention(qkv, self.heads, self.kv_heads, dropout_p)
            return self._out(y)
        q, k, v = qkv.view(B, T, -1, self.head_dim).split((self.heads, self.kv_heads, self.kv_heads), dim=2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if self.qk_norm:  # (.to: under autocast the norm answers in fp32; attention runs in v's dtype)
            q, k = rms_norm(q).to(v.dtype), rms_norm(k).to(v.dtype)
        if whole:  # the fused kernels take q, k, v side by side again
            y = kernels.causal_attention(torch.cat((q, k, v), 2).flatten(2), self.heads, self.kv_heads,
                                         dropout_p)  # fmt: skip
            return self._out(y)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # every key the new queries may see
        y = self._attend(q, k, v, attn_mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, -1)  # re-assemble the heads side by side
        return self._out(y)

    def _out(self, y: Tensor) -> Tensor:
        """The output projection back into the residual stream (and dropout, in training only: a module
        call in eval is pure overhead, ~5% of a small model's decode step)."""
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
        """softmax(q k^T / sqrt(head_dim) + mask) v for q (B, heads, T_q, d) against k, v (B, kv_heads, T_k,
        d), the queries being the last T_q keys when there is no mask."""
        T_q, T_k = q.size(2), k.size(2)
        if attn_mask is None and T_q > 1 and (T_q != T_k or not self.flash):
            # SDPA's is_causal aligns to the top left; cached keys need the bottom right: spell it out.
            pos = torch.arange(T_k, device=q.device)
            attn_mask = causal_mask(pos[T_k - T_q :], pos, T_k)
        gqa = self.kv_heads != self.heads
        if self.flash:
            if attn_mask is not None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                      enable_gqa=gqa)  # fmt: skip
            # T_q == T_k: ordinary causal attention; T_q == 1: one new token sees every cached key.
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=T_q > 1, enable_gqa=gqa
            )
        if gqa:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        if attn_mask is not None:
            att = att.float().masked_fill(~attn_mask, float("-inf"))
        att = F.softmax(att.float(), dim=-1).to(v.dtype)
        att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
        return att @ v
