"""``lm_head_loss``: the LM head and cross-entropy fused and computed in chunks of rows.

The plain way, ``F.cross_entropy(lm_head(x).float(), targets)``, materializes the full (N, vocab) logits
and an fp32 copy of them, and keeps both alive for backward: with vocab 8192 and 4096 tokens that is
hundreds of MB of memory traffic per step. Here the logits of a chunk of rows at a time are made,
turned into the loss and, when gradients are needed, straight into the gradients of the hidden states and
of the head weight (d loss / d logits = softmax - onehot), then dropped. The matmuls are the same three as
in the plain path (logits, grad of x, grad of W); only the peak memory and the traffic shrink (on the
CPU, 4096 tokens x vocab 8192 x width 384 under bf16 autocast: about 3x faster than the plain way).
The loop and the chunk size per device live in ``chunks.py`` (shared with the soft-capped loss).

The gradients are computed in the forward pass and kept ((N, d) and (vocab, d), no larger than what the
plain path saves), so evaluate under ``torch.no_grad()``: then only the loss is computed.
"""

from __future__ import annotations

import torch

from gptrs.model.kernels import chunks
from gptrs.model.kernels.chunks import CHUNK_BYTES, IGNORE_INDEX, MAX_ROWS, Policy

__all__ = ["CHUNK_BYTES", "IGNORE_INDEX", "MAX_ROWS", "fused_head_loss", "lm_head_loss"]


def _chunk_rows(n: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per chunk on ``device`` (:func:`chunks.chunk_rows` under the device's policy). On the CPU at most
    MAX_ROWS and a logits buffer of at most CHUNK_BYTES (read at call time, so tests may patch them)."""
    policy = chunks.default_policy(device)
    if policy == "cpu":
        return max(1, min(MAX_ROWS, n, CHUNK_BYTES // max(1, vocab * dtype.itemsize)))
    return chunks.chunk_rows(policy, n, vocab, dtype)


def fused_head_loss(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_grad_scale: float,
    weight: torch.Tensor,
    targets: torch.Tensor,
    rows: int,
    head: chunks.Head,
    policy: Policy,
    *,
    grad_w_scale: float = 1.0,
    needs_slope: bool = False,
) -> torch.Tensor:
    """The mean loss of a chunked head (``head`` on logits ``x w_in^T``), differentiable in x and ``weight``
    when grad mode wants it. ``w_in`` is ``weight`` in the compute dtype, possibly scaled; the gradient of x
    goes through ``weight * w_grad_scale`` and that of the weight is scaled by ``grad_w_scale``."""
    dtype = w_in.dtype
    want_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.no_grad():  # the chunk loop makes the gradients itself
        w_grad = w_in if w_grad_scale == 1.0 or not want_grad else weight.to(dtype) * w_grad_scale
        loss_sum, grad_x, grad_w = chunks.chunked_loss(
            x.to(dtype),
            w_in,
            w_grad,
            targets,
            rows,
            head,
            with_grad=want_grad,
            policy=policy,
            needs_slope=needs_slope,
        )
    if not want_grad:
        return chunks.mean_over_valid(loss_sum, targets)
    assert grad_x is not None and grad_w is not None
    if grad_w_scale != 1.0:
        grad_w = grad_w.mul_(grad_w_scale)
    out: torch.Tensor = chunks.FusedLoss.apply(x, weight, targets, loss_sum, grad_x, grad_w)
    return out


@chunks.compiler_disabled  # hand-fused for the CPU already; torch.compile would only add a graph break
def _cpu_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
    with torch.no_grad():
        w = weight.to(chunks.compute_dtype(x))
    return fused_head_loss(x, w, 1.0, weight, targets, rows, chunks.PlainHead(), "cpu")


def lm_head_loss(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    *,
    policy: Policy | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (rows with -100 ignored).

    x: (N, d) final hidden states; weight: (vocab, d) the LM head; targets: (N,) token ids or -100.
    Equal to ``F.cross_entropy((x @ weight.T).float(), targets, ignore_index=-100)`` without ever holding
    more than one chunk of rows of logits (:func:`chunks.chunk_rows`; ``chunk_size`` caps it further, for
    tests). ``policy`` ("cpu" or "cuda") defaults to the device's (:func:`chunks.default_policy`); the CUDA
    one has no host syncs and compiles. With every row ignored the loss is 0.
    """
    policy = policy or chunks.default_policy(x.device)
    dtype = chunks.compute_dtype(x)
    if policy == "cpu":
        rows = _chunk_rows(x.size(0), weight.size(0), dtype, torch.device("cpu"))
    else:
        rows = chunks.chunk_rows(policy, x.size(0), weight.size(0), dtype)
    if chunk_size is not None:
        rows = max(1, min(rows, chunk_size))
    if policy == "cpu":
        return _cpu_loss(x, weight, targets, rows)
    with torch.no_grad():
        w = weight.to(dtype)
    return fused_head_loss(x, w, 1.0, weight, targets, rows, chunks.PlainHead(), policy)
