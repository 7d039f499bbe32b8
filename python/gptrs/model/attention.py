"""Causal multi-head self-attention: the fused SDPA path and an explicit reference path.

Both paths compute softmax(q k^T / sqrt(head_dim) + mask) v per head. The default path calls
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA, the fused
flash kernel on CPU; no Triton). The reference path spells the same math out with an explicit mask and
softmax; tests check that the two agree.

Masks: ``attn_mask`` is None (plain causal attention, queries aligned to the *end* of the keys, which is
what a KV cache needs) or a boolean tensor broadcastable to (B, 1, T_q, T_k) where True means "may attend",
built by :func:`build_attention_mask` when some keys are padding.

Training on the CPU takes a third path, :func:`block_causal_attention`, under the "sdpa" name: the CPU
flash kernel's backward is slow (about 5x its forward; ~23% of a training step of the 6/6/384 model), so
causal attention is done with plain ATen batched-matmul/softmax kernels on blocks of 128 query rows, each
block only against the keys it can see (the upper-right blocks of the causal square are never computed:
25% less work at T=256, 37% at T=512), with a hand-written backward. Attention forward+backward per layer,
bf16, B=16 H=6 T=256 d=64: 14 ms against SDPA's 25 ms on 2 threads (25 against 46 on one); B=4 H=12
T=512: 19 against 33. Inference (no grad), CUDA, masks and dropout keep using SDPA.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptrs.model.linear import linear

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


# ----------------------------------------------------------------------------------------------------------
# Block-causal attention for CPU training

BLOCK_ROWS = 128  # query rows per block: big enough for efficient matmuls, small enough to skip work


def _row_blocks(T: int) -> list[tuple[int, int]]:
    n = max(1, round(T / BLOCK_ROWS))
    size = -(-T // n)
    return [(s, min(T, s + size)) for s in range(0, T, size)]


def _blocks_of(x: Tensor, blocks: list[tuple[int, int]]) -> list[Tensor]:
    """The row blocks of a contiguous (B, H, T, D) tensor as contiguous (B*H, rows, D) tensors.

    A row slice of (B*H, T, D) is not contiguous (its batch stride is T*D), and the batched matmuls copy
    such operands on every call; one permuting copy here (replacing a ``.contiguous()`` the caller would
    need anyway) gives every block in one piece. Blocks of unequal size fall back to copied slices."""
    B, H, T, D = x.shape
    rows = blocks[0][1] - blocks[0][0]
    if T % rows:
        x3 = x.reshape(B * H, T, D)
        return [x3[:, s:e].contiguous() for s, e in blocks]
    by_block = x.reshape(B * H, T // rows, rows, D).transpose(0, 1).contiguous()
    return list(by_block.unbind(0))


_FUTURE_MASKS: dict[tuple[int, str], Tensor] = {}


def _future_mask(n: int, device: torch.device) -> Tensor:
    """(n, n) bool, True above the diagonal: the keys a query may not see (cached per size and device)."""
    key = (n, str(device))
    mask = _FUTURE_MASKS.get(key)
    if mask is None:
        mask = _FUTURE_MASKS[key] = torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)
    return mask


@torch.library.custom_op("gptrs::block_causal_attention", mutates_args=())
def _block_causal_fwd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Causal softmax(q k^T / sqrt(d)) v for (B, H, T, d) inputs (k, v contiguous); also returns each
    block's probabilities (B*H, rows, keys) for the backward. A custom op, so torch.compile calls it as
    one opaque kernel instead of decomposing it (Inductor's CPU softmax over the (T, T) scores is several
    times slower than ATen's)."""
    B, H, T, D = q.shape
    k3, v3 = k.view(B * H, T, D), v.view(B * H, T, D)
    blocks = _row_blocks(T)
    # The output is laid out (B, T, H, D) and returned as a (B, H, T, D) view, so that the caller's
    # transpose(1, 2).reshape(B, T, H * D) costs nothing.
    out = q.new_empty(B, T, H, D)
    probs = []
    with torch.autocast(q.device.type, enabled=False):  # inputs arrive in the compute dtype already
        for (s, e), qb in zip(blocks, _blocks_of(q, blocks), strict=True):
            # scores = q k^T * scale, the scale applied inside the GEMM (beta=0: the buffer is not read)
            scores = torch.baddbmm(
                q.new_empty(B * H, e - s, e), qb, k3[:, :e].transpose(1, 2), beta=0, alpha=D**-0.5
            )
            # only the diagonal block has future keys
            scores[:, :, s:e].masked_fill_(_future_mask(e - s, q.device), float("-inf"))
            p = torch.softmax(scores, dim=-1)  # fp32 math inside the kernel, stored in the input dtype
            out[:, s:e].copy_(torch.bmm(p, v3[:, :e]).view(B, H, e - s, D).transpose(1, 2))
            probs.append(p)
    return out.transpose(1, 2), probs


@_block_causal_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, list[Tensor]]:
    B, H, T, D = q.shape
    out = q.new_empty(B, T, H, D).transpose(1, 2)
    return out, [q.new_empty(B * H, e - s, e) for s, e in _row_blocks(T)]


@torch.library.custom_op("gptrs::block_causal_attention_backward", mutates_args=())
def _block_causal_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v ((B, H, T, d); k, v contiguous). Per block: dV += P^T dO; dP = dO V^T;
    dS = P * (dP - rowsum(P * dP)); dQ = dS K * scale; dK += dS^T Q * scale. The last block sees every
    key, so it writes dK and dV whole and the earlier blocks add into their leading rows."""
    B, H, T, D = q.shape
    scale = D**-0.5
    k3, v3 = k.view(B * H, T, D), v.view(B * H, T, D)
    blocks = _row_blocks(T)
    dq = q.new_empty(B * H, T, D)
    dk, dv = torch.empty_like(k3), torch.empty_like(v3)
    with torch.autocast(q.device.type, enabled=False):
        per_block = zip(blocks, probs, _blocks_of(q, blocks), _blocks_of(dout, blocks), strict=True)
        for (s, e), p, qb, d in reversed(list(per_block)):
            ds = torch._softmax_backward_data(torch.bmm(d, v3[:, :e].transpose(1, 2)), p, -1, p.dtype)
            dq[:, s:e] = torch.baddbmm(dq[:, s:e], ds, k3[:, :e], beta=0, alpha=scale)
            if e == T:
                torch.bmm(p.transpose(1, 2), d, out=dv)
                torch.baddbmm(dk, ds.transpose(1, 2), qb, beta=0, alpha=scale, out=dk)
            else:
                dv[:, :e].baddbmm_(p.transpose(1, 2), d)
                dk[:, :e].baddbmm_(ds.transpose(1, 2), qb, alpha=scale)
    return dq.view(B, H, T, D), dk.view(B, H, T, D), dv.view(B, H, T, D)


@_block_causal_bwd.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the real op


class _BlockCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        # q, k, v arrive as strided views of the fused QKV projection; the batched matmuls want each
        # head's rows contiguous, so k and v are copied once here (and kept for the backward). q is
        # regrouped by row block inside the ops instead (see _blocks_of).
        k, v = k.contiguous(), v.contiguous()
        out, probs = _block_causal_fwd(q, k, v)
        ctx.save_for_backward(q, k, v, *probs)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        q, k, v, *probs = ctx.saved_tensors  # type: ignore[attr-defined]
        dq, dk, dv = _block_causal_bwd(dout, q, k, v, probs)
        return dq, dk, dv


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of (B, H, T, head_dim) q, k, v (same dtype), as SDPA with ``is_causal=True``."""
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    out: Tensor = _BlockCausalAttention.apply(q, k, v)
    return out


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
        q, k, v = linear(self.c_attn, x).split(self.embed_dim, dim=2)
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
        return self.resid_dropout(linear(self.c_proj, y))

    def decode(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, t: int, attn_mask: Tensor | None
    ) -> torch.Tensor:
        """One new token per row during cached generation: x (B, C) -> (B, C). Its key and value go to slot
        ``t`` of this layer's cache views (B, heads, max_seq_len, head_dim); it attends to slots 0..t
        (``attn_mask``, (B, 1, 1, t + 1) bool, hides padding). The same math as :meth:`forward` on a
        (B, 1, C) input with the cache, with fewer tensor ops (no reshapes of a time axis of length 1):
        decoding is a chain of small ops, where each one's fixed cost adds up."""
        B = x.size(0)
        qkv = self.c_attn(x).view(B, 3, self.heads, self.head_dim)
        k_cache[:, :, t] = qkv[:, 1]
        v_cache[:, :, t] = qkv[:, 2]
        q, k, v = qkv[:, 0, :, None], k_cache[:, :, : t + 1], v_cache[:, :, : t + 1]
        dropout_p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            y = self._sdpa(q, k, v, attn_mask, dropout_p)
        else:
            y = self._reference(q, k, v, attn_mask, dropout_p)
        y = self.c_proj(y.view(B, -1))
        return self.resid_dropout(y) if self.training else y

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
        if T_q == T_k and T_q > 1 and dropout_p == 0.0 and q.device.type == "cpu" and q.requires_grad:
            return block_causal_attention(q, k, v)  # CPU training: see the module docstring
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
