"""Language-model loss: the LM head and cross-entropy fused and computed in chunks of rows.

The plain way, ``F.cross_entropy(lm_head(x).float(), targets)``, materializes the full (N, vocab) logits
and an fp32 copy of them, and keeps both alive for backward: with vocab 8192 and 4096 tokens that is
hundreds of MB of memory traffic per step. Here the logits of ``chunk_size`` rows at a time are made,
turned into the loss and, when gradients are needed, straight into the gradients of the hidden states and
of the head weight (d loss / d logits = softmax - onehot), then dropped. The matmuls are the same three as
in the plain path (logits, grad of x, grad of W); only the peak memory and the traffic shrink (on the
2-core CPU, 4096 tokens x vocab 8192 x width 384 under bf16 autocast: about 2x faster than the plain way).

The gradients are computed in the forward pass and kept ((N, d) and (vocab, d), no larger than what the
plain path saves), so evaluate under ``torch.no_grad()``: then only the loss is computed.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on for x's device, else x's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _chunked_loss(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed cross-entropy over valid rows, and (if with_grad) the gradients of x and weight of the mean.

    Per chunk: logits = x W^T in the compute dtype, then in one fp32 buffer e = exp(logits - max),
    lse = max + log(sum e), loss = lse - logit[target], and d(mean loss)/d logits = (e / sum e - onehot)
    / n_valid, cast back to the compute dtype for the two gradient matmuls. The buffers are allocated
    once per call and reused by every chunk (large fresh allocations are slow on CPU: page faults).
    """
    dtype = _compute_dtype(x)
    xc, wc = x.to(dtype), weight.to(dtype)
    N, V = x.size(0), weight.size(0)
    valid = targets != IGNORE_INDEX
    row_scale = valid.to(torch.float32) / valid.sum().clamp(min=1).to(torch.float32)
    safe_targets = targets.clamp(min=0)[:, None]
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    grad_x = torch.empty_like(x) if with_grad else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad else None
    c = min(chunk_size, N)
    logits_buf = torch.empty(c, V, dtype=dtype, device=x.device)
    e_buf = logits_buf if dtype == torch.float32 else torch.empty(c, V, dtype=torch.float32, device=x.device)
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, N, c):
            end = min(start + c, N)
            n = end - start
            logits = torch.mm(xc[start:end], wc.t(), out=logits_buf[:n])
            t = safe_targets[start:end]
            target_logit = logits.gather(1, t).squeeze(1).float()
            e = e_buf[:n]
            if e is not logits:
                e.copy_(logits)
            row_max = e.amax(dim=1, keepdim=True)
            e.sub_(row_max).exp_()
            sum_e = e.sum(dim=1, keepdim=True)
            lse = (row_max + sum_e.log()).squeeze(1)
            loss += ((lse - target_logit) * valid[start:end]).sum()
            if grad_x is not None and grad_w is not None:
                scale = row_scale[start:end, None]
                e.mul_(scale / sum_e)  # softmax / n_valid on valid rows, 0 on ignored ones
                e.scatter_add_(1, t, -scale)  # minus the one-hot
                g = logits.copy_(e) if e is not logits else e  # back to the compute dtype, in place
                grad_x[start:end] = g @ wc
                grad_w += g.t() @ xc[start:end]  # accumulated in fp32 across chunks
    return loss, grad_x, grad_w


class _FusedLMHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
    ) -> torch.Tensor:
        loss_sum, grad_x, grad_w = _chunked_loss(x, weight, targets, chunk_size, with_grad=True)
        assert grad_x is not None and grad_w is not None
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        return loss_sum / n_valid

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        grad_x, grad_w = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


def lm_head_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (rows with -100 ignored).

    x: (N, d) final hidden states; weight: (vocab, d) the LM head; targets: (N,) token ids or -100.
    Equal to ``F.cross_entropy((x @ weight.T).float(), targets, ignore_index=-100)`` without ever holding
    more than ``chunk_size`` rows of logits. With every row ignored the loss is 0.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out: torch.Tensor = _FusedLMHeadLoss.apply(x, weight, targets, chunk_size)
        return out
    loss_sum, _, _ = _chunked_loss(x, weight, targets, chunk_size, with_grad=False)
    return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1)
