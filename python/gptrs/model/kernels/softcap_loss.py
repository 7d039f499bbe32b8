"""The fused chunked LM-head loss of ``loss.py`` with a soft-capped logit: ``cap * tanh((x W^T) / cap)``.

nanochat (and Gemma 2) squash the final logits into (-cap, cap) with a tanh before the softmax. The plain
way materializes the (N, vocab) logits, their tanh and an fp32 copy; here, as in ``loss.py``, a chunk of
rows at a time is turned into the loss and, when gradients are needed, straight into the gradients of the
hidden states and of the head weight, then dropped (the loop is ``chunks.chunked_loss``). The only change
is the chain rule through the cap:

    d loss / d z = (softmax(s) - onehot) * (1 - tanh(z / cap)^2),     s = cap * tanh(z / cap),  z = x W^T

so each chunk keeps a second buffer with the slope ``1 - tanh^2`` next to the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptrs.model.kernels import chunks
from gptrs.model.kernels.loss import fused_head_loss


def softcap(logits: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(logits / cap)`` (nanochat's and ``transformers``' formula); the logits as they are for None."""
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


class SoftcapHead:
    """Soft-capped logits from ``u = 2 z / cap`` (the 2/cap is folded into the weight).

    tanh is computed as ``2 sigmoid(2u) - 1``: ATen's CPU sigmoid is ~3x faster than its tanh, the ``- 1``
    (a constant shift of every logit) does not change the softmax, and the slope ``1 - tanh^2 = 4 g (1 - g)``
    takes one ``addcmul``, its 4 folded into the weight of the gradient matmul and a final scale of the
    (vocab, d) weight gradient. Per chunk that is 5 passes over the (rows, vocab) block besides the matmuls
    and the softmax's own, instead of 8."""

    def __init__(self, cap: float, with_grad: bool) -> None:
        self.cap = cap
        self.with_grad = with_grad

    def probs(self, z: Tensor, scratch: Tensor | None, in_place: bool) -> tuple[Tensor, Tensor | None]:
        # z is this chunk's own tensor under both policies: overwriting it is safe.
        g = z.sigmoid_()  # tanh(z / cap) = 2 g - 1
        slope = None
        if self.with_grad:  # g (1 - g) = slope / 4
            slope = torch.addcmul(g, g, g, value=-1.0, out=scratch) if scratch is not None else g - g * g
        s = g.mul_(2.0 * self.cap)  # the capped logits + cap: the same softmax
        if in_place:
            return torch.ops.aten._softmax.out(s, 1, False, out=s), slope
        return torch.softmax(s, 1), slope


def _loss(x: Tensor, weight: Tensor, targets: Tensor, cap: float, rows: int, policy: chunks.Policy) -> Tensor:
    want_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.no_grad():
        w_in = weight.to(chunks.compute_dtype(x)) * (2.0 / cap)  # u = x (2W/cap)^T = 2 z / cap
    head = SoftcapHead(cap, want_grad)
    return fused_head_loss(
        x, w_in, 4.0, weight, targets, rows, head, policy, grad_w_scale=4.0, needs_slope=True
    )


@chunks.compiler_disabled  # hand-fused for the CPU already
def _cpu_loss(x: Tensor, weight: Tensor, targets: Tensor, cap: float, rows: int) -> Tensor:
    return _loss(x, weight, targets, cap, rows, "cpu")


def lm_head_softcap_cross_entropy(
    x: Tensor,
    weight: Tensor,
    targets: Tensor,
    cap: float,
    chunk_size: int | None = None,
    *,
    policy: chunks.Policy | None = None,
) -> Tensor:
    """Mean cross-entropy of ``cap * tanh(x @ weight.T / cap)`` against ``targets`` (-100 rows ignored).

    Equal to ``F.cross_entropy(softcap((x @ weight.T).float(), cap), targets, ignore_index=-100)`` without
    holding more than one chunk of rows of logits (``chunks.chunk_rows`` for the device's ``policy``,
    capped by ``chunk_size`` when given). With every row ignored the loss is 0.
    """
    if not cap > 0:
        raise ValueError(f"the logit soft cap must be > 0, got {cap!r}")
    policy = policy or chunks.default_policy(x.device)
    rows = chunks.chunk_rows(policy, x.size(0), weight.size(0), chunks.compute_dtype(x))
    if chunk_size is not None:
        rows = max(1, min(rows, chunk_size))
    if policy == "cpu":
        return _cpu_loss(x, weight, targets, float(cap), rows)
    return _loss(x, weight, targets, float(cap), rows, policy)
