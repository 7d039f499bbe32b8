"""The model's device kernels: fast paths the model calls through one entry point each.

Each entry point chooses its kernel by device, dtype and mode itself, so the model's forward reads as plain
math with no device tests in it (nanochat keeps its kernels apart the same way). Each kernel exists because
the plain PyTorch call it replaces was measured slow on the CPU; the figures are in its module's docstring.

- :func:`causal_attention` ``(qkv, heads, dropout_p) -> y``: causal self-attention from the fused QKV
  projection (B, T, 3C) to (B, T, C). CPU training: block-causal attention (``block_causal.py``: blocks of
  query rows that skip the masked half of the scores, with a hand-written backward; the CPU flash kernel's
  backward is ~5x its forward). Anything else: ``scaled_dot_product_attention(is_causal=True)``.
- :class:`Linear`: ``nn.Linear`` whose CPU bf16 training forward adds the bias inside the GEMM (oneDNN), not
  in a separate pass over the output (``linear.py``; 2-4% per training step). Same parameters and
  state_dict as ``nn.Linear``; :func:`as_plain_linears` turns them back for tools that match ``nn.Linear`` by
  exact type (int8 dynamic quantization).
- :class:`RowHead`: ``nn.Linear`` for the LM head; rows (B, C) without gradients on the CPU in fp32 (every
  generation step) multiply a kept transposed copy of the weight, which MKL's one-row GEMM streams ~2.5x
  faster out of cache (``linear.py``).
- :func:`gelu` ``(x, approximate) -> y``: GELU; small fp32 inputs without gradients on the CPU (decode
  steps) run ATen's own kernel instead of oneDNN's, whose GELU costs ~45 us per call whatever the size
  (~55 us against ~11 us for a 1536-wide row on an AVX2 AMD EPYC; 4-8% of a small model's decode step).
- :func:`lm_head_loss` ``(x, weight, targets) -> loss``: LM head + cross-entropy fused and computed in
  chunks of rows, so the (N, vocab) logits and their fp32 copy never exist (``loss.py``; ~3x the
  plain way on the CPU). The chunk loop and its size per device are in ``chunks.py`` (``chunk_rows``): small
  chunks in reused buffers on the CPU, a few large ones with no host sync on CUDA (``torch.compile`` traces it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gptrs.model.kernels.block_causal import BLOCK_ROWS, block_causal_attention
from gptrs.model.kernels.linear import Linear, RowHead, as_plain_linears
from gptrs.model.kernels.loss import IGNORE_INDEX, lm_head_loss

__all__ = [
    "BLOCK_ROWS",
    "IGNORE_INDEX",
    "Linear",
    "RowHead",
    "as_plain_linears",
    "block_causal_attention",
    "causal_attention",
    "gelu",
    "lm_head_loss",
]


SMALL_GELU = 1 << 14  # elements: below this, oneDNN's per-call setup is most of a GELU's cost


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """``F.gelu(x, approximate=...)`` (what ``nn.GELU`` computes). A small fp32 input on the CPU without
    gradients (a decode step's rows) runs ATen's own vectorized kernel, with oneDNN switched off for the
    call: oneDNN's GELU has a fixed per-call cost (~55 us against ~11 us for a 1536-wide row on an AVX2
    AMD EPYC). The same function to within an ulp, and the same kernel for the same small input whichever
    path (decode step or full forward) computes it."""
    if (
        x.numel() > SMALL_GELU
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or torch.is_grad_enabled()
        or not torch._C._get_mkldnn_enabled()
    ):
        return F.gelu(x, approximate=approximate)
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.gelu(x, approximate=approximate)
    finally:
        torch._C._set_mkldnn_enabled(True)


def causal_attention(qkv: Tensor, heads: int, kv_heads: int | None = None, dropout_p: float = 0.0) -> Tensor:
    """Causal self-attention over a whole sequence, from the fused projection ``qkv`` (B, T, (heads + 2 *
    kv_heads) * head_dim): q, k, v side by side, each with its heads side by side. Returns (B, T, heads *
    head_dim), heads side by side, ready for the output projection.

    CPU training without dropout and without grouped heads takes :func:`block_causal_attention` (no head
    reshapes here: it splits and merges the heads in the copies its matmuls make anyway); everything else
    SDPA with ``is_causal`` (``enable_gqa`` for grouped heads).
    """
    kv_heads = heads if kv_heads is None else kv_heads
    B, T, width = qkv.shape
    D = width // (heads + 2 * kv_heads)
    if qkv.requires_grad and dropout_p == 0.0 and T > 1 and qkv.device.type == "cpu" and kv_heads == heads:
        return block_causal_attention(qkv, heads)
    q, k, v = qkv.split((heads * D, kv_heads * D, kv_heads * D), dim=2)
    # (B, T, heads * D) -> (B, heads, T, D)
    q = q.view(B, T, heads, D).transpose(1, 2)
    k = k.view(B, T, kv_heads, D).transpose(1, 2)
    v = v.view(B, T, kv_heads, D).transpose(1, 2)
    y = F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, is_causal=T > 1, enable_gqa=kv_heads != heads
    )
    return y.transpose(1, 2).reshape(B, T, heads * D)
