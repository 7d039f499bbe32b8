"""The fused chunked LM-head loss of ``loss.py`` with a soft-capped logit: ``cap * tanh((x W^T) / cap)``.

nanochat (and Gemma 2) squash the final logits into (-cap, cap) with a tanh before the softmax. The plain
way materializes the (N, vocab) logits, their tanh and an fp32 copy; here, as in ``loss.py``, ``chunk_size``
rows at a time are turned into the loss and, when gradients are needed, straight into the gradients of the
hidden states and of the head weight, then dropped. The only change is the chain rule through the cap:

    d loss / d z = (softmax(s) - onehot) * (1 - tanh(z / cap)^2),     s = cap * tanh(z / cap),  z = x W^T

so each chunk keeps a second buffer with the slope ``1 - tanh^2`` next to the logits. Kept apart from ``loss.py`` so
the GPT-2 path (no cap) stays exactly as it is; the two share ``IGNORE_INDEX`` and ``CHUNK_BYTES``.
"""

from __future__ import annotations

import torch

from gptrs.model.kernels.loss import CHUNK_BYTES, IGNORE_INDEX


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` (nanochat's and ``transformers``' formula); the logits as they are for None."""
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _chunked_softcap_loss(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float, chunk_size: int, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed cross-entropy of the capped logits over valid rows and (if with_grad) the unscaled gradients
    of x and weight, in the compute dtype; see ``loss._chunked_loss`` for the buffer discipline.

    tanh is computed as ``2 sigmoid(2u) - 1``: ATen's CPU sigmoid is ~3x faster than its tanh, the 2/cap
    goes into the (small) weight before the matmul, the ``- 1`` (a constant shift of every logit) does not
    change the softmax, and the slope ``1 - tanh^2 = 4 g (1 - g)`` takes one ``addcmul``, its 4 folded into
    the weight of the gradient matmul and a final scale of the (vocab, d) weight gradient. Per chunk that
    is 5 passes over the (rows, vocab) block besides the matmuls and the softmax's own, instead of 8.
    """
    dtype = _compute_dtype(x)
    xc, wc = x.to(dtype), weight.to(dtype)
    w_in = wc * (2.0 / cap)  # u = x (2W/cap)^T = 2 z / cap
    w_grad = wc * 4.0 if with_grad else wc  # d loss / d z = (p - onehot) * 4 g (1 - g)
    N, V = x.size(0), weight.size(0)
    valid = targets != IGNORE_INDEX
    all_valid = bool(valid.all())
    safe_targets = targets.clamp(min=0)
    tiny = torch.finfo(torch.float32).tiny
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    grad_x = torch.empty(N, x.size(1), dtype=dtype, device=x.device) if with_grad else None
    grad_w = torch.empty(0) if with_grad else None
    c = max(1, min(chunk_size, N, CHUNK_BYTES // (V * dtype.itemsize)))
    logits_buf = torch.empty(c, V, dtype=dtype, device=x.device)
    slope_buf = torch.empty(c, V, dtype=dtype, device=x.device) if with_grad else None
    minus_one = torch.full((c,), -1.0, dtype=dtype, device=x.device)
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, N, c):
            end = min(start + c, N)
            n = end - start
            u = torch.mm(xc[start:end], w_in.t(), out=logits_buf[:n])
            g = u.sigmoid_()  # tanh(z / cap) = 2 g - 1
            if slope_buf is not None:
                slope = torch.addcmul(g, g, g, value=-1.0, out=slope_buf[:n])  # g (1 - g) = slope / 4
            s = g.mul_(2.0 * cap)  # the capped logits + cap: the same softmax
            p = torch.ops.aten._softmax.out(s, 1, False, out=s)  # in place
            flat_t = torch.arange(n, device=x.device) * V + safe_targets[start:end]
            nll = -p.view(-1).index_select(0, flat_t).float().clamp(min=tiny).log()
            loss += nll.sum() if all_valid else (nll * valid[start:end]).sum()
            if grad_x is not None and grad_w is not None:
                p.view(-1).index_add_(0, flat_t, minus_one[:n])  # softmax - onehot
                p.mul_(slope)
                if not all_valid:
                    p.mul_(valid[start:end, None].to(dtype))
                torch.mm(p, w_grad, out=grad_x[start:end])
                if start == 0:
                    grad_w = torch.mm(p.t(), xc[start:end])
                else:
                    grad_w.addmm_(p.t(), xc[start:end])
    if grad_w is not None:
        grad_w.mul_(4.0)
    return loss, grad_x, grad_w


class _FusedSoftcapLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        cap: float,
        chunk_size: int,
    ) -> torch.Tensor:
        loss_sum, grad_x, grad_w = _chunked_softcap_loss(x, weight, targets, cap, chunk_size, with_grad=True)
        assert grad_x is not None and grad_w is not None
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
        ctx.save_for_backward(grad_x, grad_w, n_valid)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype  # type: ignore[attr-defined]
        return loss_sum / n_valid

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:
        grad_x, grad_w, n_valid = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = grad_out.to(torch.float32) / n_valid
        gx = grad_x.to(ctx.x_dtype, copy=True).mul_(scale)  # type: ignore[attr-defined]
        gw = grad_w.to(ctx.w_dtype, copy=True).mul_(scale)  # type: ignore[attr-defined]
        return gx, gw, None, None, None


@torch.compiler.disable
def lm_head_softcap_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float, chunk_size: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of ``cap * tanh(x @ weight.T / cap)`` against ``targets`` (-100 rows ignored).

    Equal to ``F.cross_entropy(softcap((x @ weight.T).float(), cap), targets, ignore_index=-100)`` without
    holding more than ``chunk_size`` rows of logits. With every row ignored the loss is 0.
    """
    if not cap > 0:
        raise ValueError(f"the logit soft cap must be > 0, got {cap!r}")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out: torch.Tensor = _FusedSoftcapLoss.apply(x, weight, targets, float(cap), chunk_size)
        return out
    loss_sum, _, _ = _chunked_softcap_loss(x, weight, targets, float(cap), chunk_size, with_grad=False)
    return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1)
