"""The chunk loop shared by the fused LM-head losses (``loss.py``, ``softcap_loss.py``), and its chunk size.

Both losses turn ``rows`` rows of hidden states at a time into logits, the loss and (when gradients are
needed) the gradients of the hidden states and of the head weight, then drop the logits. They differ only
in how a chunk's logits become probabilities (a plain softmax, or a softmax of soft-capped logits with a
chain-rule factor): that part is a :class:`Head`; the loop, the buffers and the gradient matmuls are here.

The loop runs under one of two policies, chosen by device (:func:`default_policy`):

- ``"cpu"``: small chunks (:data:`CHUNK_BYTES` of logits, at most :data:`MAX_ROWS` rows) written into
  preallocated buffers with ``out=`` and in-place ops, and a host check of whether any target is ignored.
  Small buffers are reused by the allocator between steps instead of mapping fresh pages (page faults are
  slow on the CPU); this is what makes the CPU step fast.
- ``"cuda"``: a few large chunks sized by a memory budget (:data:`CUDA_CHUNK_BYTES` of logits: the GPT-2
  124M shape, 16,384 rows x vocab 50,304 in bf16, takes 2 chunks of 8,192 rows), no host syncs and no
  ``out=`` buffers, so ``torch.compile`` traces it whole. On a GPU each chunk is a handful of kernels, so
  ~100 chunks of 163 rows (the CPU budget at that vocabulary) spent most of the step launching them.

Either way the (N, vocab) logits and their fp32 copy never exist at once: the memory advantage over
``F.cross_entropy(lm_head(x).float(), targets)`` stays.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Literal, ParamSpec, Protocol, TypeVar

import torch
from torch import Tensor

IGNORE_INDEX = -100
MAX_ROWS = 1024  # CPU: rows of logits alive at once, at most
CHUNK_BYTES = 16 << 20  # CPU: cap on the logits buffer of one chunk
CUDA_CHUNK_BYTES = 1 << 30  # CUDA: cap on the logits of one chunk (the caching allocator keeps it)

Policy = Literal["cpu", "cuda"]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def compiler_disabled(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``torch.compiler.disable(fn)``, applied lazily. Decorating at import time imports ``torch._dynamo``
    (~2.5 s on these CPUs), which every CLI would pay even when nothing compiles; and nothing can be
    compiling before ``torch._dynamo`` is imported, so until then ``fn`` runs as it is."""
    disabled: list[Callable[_P, _R]] = []

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return wrapper


def default_policy(device: torch.device) -> Policy:
    """``"cuda"`` on CUDA devices, ``"cpu"`` everywhere else (the CPU and MPS take today's small chunks)."""
    return "cuda" if device.type == "cuda" else "cpu"


def chunk_rows(policy: Policy, rows: int, vocab: int, dtype: torch.dtype, budget: int | None = None) -> int:
    """Rows per chunk for ``rows`` rows of ``vocab`` logits in ``dtype`` (``budget``: bytes of logits per
    chunk, default :data:`CHUNK_BYTES` on the CPU, :data:`CUDA_CHUNK_BYTES` on CUDA).

    CPU: at most :data:`MAX_ROWS` rows and the budget. CUDA: the fewest chunks that fit the budget, of equal
    size (so the last chunk is not a sliver, and a compiled graph sees at most two shapes)."""
    per_row = max(1, vocab * dtype.itemsize)
    if policy == "cuda":
        limit = max(1, (CUDA_CHUNK_BYTES if budget is None else budget) // per_row)
        if rows <= limit:
            return max(1, rows)
        chunks = -(-rows // limit)
        return -(-rows // chunks)
    limit = (CHUNK_BYTES if budget is None else budget) // per_row
    return max(1, min(MAX_ROWS, rows, limit))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on for x's device, else x's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class Head(Protocol):
    """How a chunk's logits ``z = x w_in^T`` become probabilities, and the chain rule back to ``z``."""

    def probs(self, z: Tensor, scratch: Tensor | None, in_place: bool) -> tuple[Tensor, Tensor | None]:
        """``(p, slope)``: the softmax of the final logits (may overwrite ``z`` when ``in_place``), and the
        factor ``d s / d z`` that multiplies ``p - onehot`` (None: 1), written into ``scratch`` if given."""
        ...


class PlainHead:
    """The GPT-2 head: the logits are ``z`` itself."""

    def probs(self, z: Tensor, scratch: Tensor | None, in_place: bool) -> tuple[Tensor, Tensor | None]:
        if in_place:  # ATen's kernel does the max/exp/sum in fp32 and writes the compute dtype
            return torch.ops.aten._softmax.out(z, 1, False, out=z), None
        return torch.softmax(z, 1), None


def chunked_loss(
    xc: Tensor,
    w_in: Tensor,
    w_grad: Tensor,
    targets: Tensor,
    rows: int,
    head: Head,
    *,
    with_grad: bool,
    policy: Policy,
    needs_slope: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Summed cross-entropy over valid rows and (if with_grad) the *unscaled* gradients of the summed loss
    with respect to ``xc`` ((N, d), through ``w_grad``) and to the weight ((vocab, d)), in the compute dtype
    (``xc``'s); the caller divides by the number of valid rows.

    Per chunk: logits = x w_in^T; p = softmax (in place on the CPU); loss = -log p[target]; p[target] -= 1
    gives d loss / d logits (times the head's slope; rows with ignored targets zeroed) for the two gradient
    matmuls. Against an fp32 copy of the logits this touches the (rows, vocab) block 3 times instead of ~8
    (4096 tokens x vocab 8192 x width 384, bf16, one CPU thread: 125 ms per forward+backward instead of
    200). The loss of a token is -log of its rounded probability: exact to the compute dtype's precision
    (bf16: ~0.2% relative), capped at ~87 nats where that probability underflows fp32.
    """
    cpu = policy == "cpu"
    dtype, device = xc.dtype, xc.device
    N, V = xc.size(0), w_in.size(0)
    valid = targets != IGNORE_INDEX
    all_valid = bool(valid.all()) if cpu else False  # a host sync: the CPU only
    safe_targets = targets.clamp(min=0)
    valid_rows = valid.to(dtype)[:, None]
    tiny = torch.finfo(torch.float32).tiny
    loss = torch.zeros((), dtype=torch.float32, device=device)
    grad_x = torch.empty(N, xc.size(1), dtype=dtype, device=device) if with_grad and cpu else None
    grad_x_parts: list[Tensor] = []
    grad_w: Tensor | None = None
    c = rows
    if cpu:  # one reused buffer per chunk-sized block
        logits_buf = torch.empty(c, V, dtype=dtype, device=device)
        slope_buf = torch.empty(c, V, dtype=dtype, device=device) if with_grad and needs_slope else None
        minus_one = torch.full((c,), -1.0, dtype=dtype, device=device)
    with torch.autocast(device.type, enabled=False):
        for start in range(0, N, c):
            end = min(start + c, N)
            n = end - start
            t = safe_targets[start:end]
            if cpu:
                z = torch.mm(xc[start:end], w_in.t(), out=logits_buf[:n])
                scratch = slope_buf[:n] if slope_buf is not None else None
                p, slope = head.probs(z, scratch, True)
                flat_t = torch.arange(n, device=device) * V + t  # index of each row's target in p.view(-1)
                picked = p.view(-1).index_select(0, flat_t)
            else:
                p, slope = head.probs(torch.mm(xc[start:end], w_in.t()), None, False)
                picked = p.gather(1, t[:, None]).squeeze(1)
            nll = -picked.float().clamp(min=tiny).log()
            loss = loss + (nll.sum() if all_valid else (nll * valid[start:end]).sum())
            if not with_grad:
                continue
            if cpu:  # softmax - onehot; index_add_, as scatter_add_ is ~1000x slower on bf16 CPU tensors
                p.view(-1).index_add_(0, flat_t, minus_one[:n])
            else:
                p = p.scatter_add_(1, t[:, None], torch.full((n, 1), -1.0, dtype=dtype, device=device))
            if slope is not None:
                p = p.mul_(slope)
            if not all_valid:
                p = p.mul_(valid_rows[start:end])
            if grad_x is not None:
                torch.mm(p, w_grad, out=grad_x[start:end])
            else:
                grad_x_parts.append(torch.mm(p, w_grad))
            if grad_w is None:
                grad_w = torch.mm(p.t(), xc[start:end])
            elif cpu:  # accumulated inside the GEMM (beta=1): no separate add or fp32 copy per chunk
                grad_w.addmm_(p.t(), xc[start:end])
            else:
                grad_w = torch.addmm(grad_w, p.t(), xc[start:end])
    if with_grad and not cpu:
        grad_x = grad_x_parts[0] if len(grad_x_parts) == 1 else torch.cat(grad_x_parts)
    if with_grad and grad_w is None:  # no rows at all
        grad_w = torch.zeros_like(w_in)
    return loss, grad_x, grad_w


def mean_over_valid(loss_sum: Tensor, targets: Tensor) -> Tensor:
    """The summed loss divided by the number of valid targets (at least 1: all ignored gives 0)."""
    return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)


class FusedLoss(torch.autograd.Function):
    """The mean of a chunked loss, with the gradients :func:`chunked_loss` already made (under no_grad):
    saved here, then scaled by the incoming gradient / the number of valid rows in backward. Kept this small
    so that ``torch.compile`` traces it (the chunk loop stays outside, as plain tensor code)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        targets: Tensor,
        loss_sum: Tensor,
        grad_x: Tensor,
        grad_w: Tensor,
    ) -> Tensor:
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
        ctx.save_for_backward(grad_x, grad_w, n_valid)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype  # type: ignore[attr-defined]
        return loss_sum / n_valid

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor, Tensor, None, None, None, None]:
        grad_x, grad_w, n_valid = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = grad_out.to(torch.float32) / n_valid  # the mean's 1/n, folded into the one pass each needs
        gx = grad_x.to(ctx.x_dtype, copy=True).mul_(scale)  # type: ignore[attr-defined]
        gw = grad_w.to(ctx.w_dtype, copy=True).mul_(scale)  # type: ignore[attr-defined]
        return gx, gw, None, None, None, None
