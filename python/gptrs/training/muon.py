"""Optimizers: AdamW alone (``training.optimizer: adamw``) or Muon + AdamW (``muon``), as one object.

Muon (Jordan et al. 2024, ``torch.optim.Muon``) orthogonalises the momentum of each 2-D weight matrix with a
Newton-Schulz iteration before applying it: every direction of the matrix moves at the same rate, which
suits the hidden matrices of a transformer (attention and MLP projections). It is not meant for the token
embedding (a lookup table, not a linear map of the residual stream), the LM head, or anything that is not
2-D (biases, norm weights); those stay with AdamW, each kind in its own group:

    hidden   2-D weights of the blocks                  Muon   lr = muon_lr
    embed    nn.Embedding weights (token, position)     AdamW  lr = embedding_lr, no decay
    head     the LM head, when untied                   AdamW  lr = lr, no decay
    other    biases, norm weights, anything not 2-D     AdamW  lr = lr, no decay

One learning-rate schedule drives all groups: each group carries ``lr_scale`` (its peak rate / ``lr``) and
:func:`apply_lr` sets ``group["lr"] = schedule(step) * lr_scale``. :class:`MuonAdamW` exposes the groups of
both optimizers as one ``param_groups`` list (the same dicts, so writes reach the optimizers) and one
``state_dict``; both optimizers are deterministic on the CPU, so a resumed run continues bitwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, cast

import torch
from torch import nn

from gptrs.training.precision import cpu_supports_bf16

OPTIMIZERS = ("adamw", "muon")
MUON_NS = ("quintic", "polar_express")  # training.muon_ns
# Polar Express (Amsel et al. 2025, arXiv 2505.16932; modded-nanogpt and nanochat since late 2025): one
# (a, b, c) per iteration, each the odd quintic that best pushes the singular values still in range to 1,
# for inputs scaled by POLAR_EXPRESS_SAFETY over their Frobenius norm. Five iterations.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02


def apply_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    """Set every group's rate to ``lr`` times its ``lr_scale`` (1 when absent): one schedule for all groups."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by kind: ``hidden`` (2-D, for Muon), ``embed``, ``head``, ``other``.

    ``head`` is ``model.lm_head.weight`` unless it is tied to an embedding (then it is one of ``embed``).
    Every trainable parameter lands in exactly one list, in ``model.parameters()`` order.
    """
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    head_id = id(head.weight) if isinstance(head, nn.Linear) and id(head.weight) not in embed_ids else None
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "embed": [], "head": [], "other": []}
    for p in model.parameters():  # parameters() yields a shared (tied) tensor once
        if not p.requires_grad:
            continue
        if id(p) in embed_ids:
            groups["embed"].append(p)
        elif id(p) == head_id:
            groups["head"].append(p)
        elif p.dim() == 2:
            groups["hidden"].append(p)
        else:
            groups["other"].append(p)
    return groups


@functools.cache
def _native_cpu_bf16() -> bool:
    return cpu_supports_bf16()


def orthogonalize(
    g: torch.Tensor,
    coefficients: tuple[float, float, float] | tuple[tuple[float, float, float], ...],
    steps: int,
    eps: float,
    dtype: torch.dtype,
    safety: float = 1.0,
) -> torch.Tensor:
    """Approximately U V^T of ``g = U S V^T`` by the quintic Newton-Schulz iteration of Muon (singular
    values pushed into roughly [0.7, 1.2], which trains as well as exact orthogonalisation): ``steps``
    times the same (a, b, c), or, given one (a, b, c) per iteration (:data:`POLAR_EXPRESS`), each once."""
    per_step = isinstance(coefficients[0], tuple)
    schedule = cast(
        "tuple[tuple[float, float, float], ...]", coefficients if per_step else (coefficients,) * steps
    )
    x = g.to(dtype, copy=True)
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix x x^T is then the smaller one
        x = x.T
    x.div_((x.norm() * safety).clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for a, b, c in schedule:
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (same hyperparameters, groups and state) with the Newton-Schulz iteration in
    bf16 only where bf16 is native: torch always uses bf16, which CPUs without AVX512-BF16/AMX emulate, ~15x
    slower than fp32 (0.16 s against 0.01 s per 512 x 128 matrix on one thread): on the small preset that
    is 1.5 s of optimizer per 2 s training step. The update rule is torch's: Nesterov momentum
    (``buf.lerp_(g, 1 - m)``, update ``g.lerp(buf, m)``), decoupled weight decay, and the step scaled by
    sqrt(max(1, fan_out / fan_in)) (Keller Jordan's original adjustment, torch's default).

    Two switches per group (the speedrun's, docs/speedrun.md): ``polar_express`` orthogonalises with the
    :data:`POLAR_EXPRESS` schedule instead of the fixed quintic; ``normuon_beta2`` (a float; None: off)
    applies NorMuon (Li et al. 2025, arXiv 2510.05491; modded-nanogpt record of Oct 2025, nanochat):
    each output neuron's (row's, or column's for a wide matrix) update is divided by the root of an EMA of
    its mean square, then the whole update rescaled to its norm before, so every neuron moves alike."""

    force_ns_dtype: torch.dtype | None = None  # tests set bf16 to compare with torch's Muon
    # Matrices that are several stacked side by side, by id: the rows of each part (a fused q/k/v
    # projection). Each part is orthogonalised on its own, as if it were its own parameter: what Muon does
    # for separate q, k and v matrices (nanochat) and modded-nanogpt for its stacked ones.
    row_splits: Mapping[int, tuple[int, ...]] = MappingProxyType({})

    def ns_dtype(self, device: torch.device) -> torch.dtype:
        if self.force_ns_dtype is not None:
            return self.force_ns_dtype
        if device.type == "cuda" or (device.type == "cpu" and _native_cpu_bf16()):
            return torch.bfloat16
        return torch.float32

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["adjust_lr_fn"] not in (None, "original"):
                raise ValueError(
                    f"gptrs' Muon implements adjust_lr_fn='original' only, got {group['adjust_lr_fn']!r}"
                )
            lr, wd, m = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - m)
                update = grad.lerp(buf, m) if group["nesterov"] else buf
                dtype = self.ns_dtype(p.device)
                p.mul_(1 - lr * wd)
                polar = group.get("polar_express", False)
                beta2 = group.get("normuon_beta2")
                start = 0
                for i, rows in enumerate(self.row_splits.get(id(p), (p.size(0),))):
                    part = update[start : start + rows]
                    ortho = orthogonalize(
                        part,
                        POLAR_EXPRESS if polar else group["ns_coefficients"],
                        group["ns_steps"],
                        group["eps"],
                        dtype,
                        POLAR_EXPRESS_SAFETY if polar else 1.0,
                    )
                    if beta2 is not None:
                        ortho = _normuon(ortho, state, f"normuon_v{i}", beta2)
                    scale = math.sqrt(max(1.0, rows / p.size(1)))
                    p[start : start + rows].add_(ortho.to(p.dtype), alpha=-lr * scale)
                    start += rows
        return loss


def _normuon(u: torch.Tensor, state: dict[str, Any], key: str, beta2: float) -> torch.Tensor:
    """NorMuon's per-neuron normalisation of an orthogonalised update ``u`` (nanochat's formulation): the
    mean square of each row (of each column when ``u`` is wide) is averaged over steps in ``state[key]``, the
    update divided by its root, and the result rescaled to the Frobenius norm ``u`` had."""
    dim = -1 if u.size(0) >= u.size(1) else -2
    u32 = u.float()
    v_mean = u32.square().mean(dim=dim, keepdim=True)
    if key not in state:
        state[key] = torch.zeros_like(v_mean)
    buf = state[key]
    buf.lerp_(v_mean, 1 - beta2)
    step = buf.clamp_min(1e-10).rsqrt()
    norm_before = (v_mean.sum() * u.size(dim)).sqrt()
    norm_after = ((v_mean * step.square()).sum() * u.size(dim)).sqrt()
    return (u32 * (step * (norm_before / norm_after.clamp_min(1e-10)))).to(u.dtype)


class MuonAdamW:
    """``torch.optim.Muon`` for the hidden matrices and ``torch.optim.AdamW`` for the rest, used as one
    optimizer: ``param_groups``, ``step``, ``zero_grad``, ``state_dict``/``load_state_dict``."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon = muon
        self.adamw = adamw

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return (self.muon, self.adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "muon_adamw", "muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "muon_adamw":
            raise ValueError(
                f"optimizer state is not a Muon + AdamW state (kind {state.get('kind')!r}); "
                "was the checkpoint written with another training.optimizer?"
            )
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def _adamw(groups: list[dict[str, Any]], **kwargs: Any) -> torch.optim.AdamW:
    # Fused AdamW (one kernel for all parameters, CPU and CUDA), deterministic, as the trainer uses it.
    params: Iterable[torch.Tensor] = (p for g in groups for p in g["params"])
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    try:
        return torch.optim.AdamW(groups, fused=fused, **kwargs)
    except (RuntimeError, TypeError):  # an older torch without fused kernels for this device
        return torch.optim.AdamW(groups, **kwargs)


def build_optimizer(
    model: nn.Module,
    *,
    optimizer: str = "adamw",
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    embedding_lr: float | None = None,
    muon_lr: float = 0.02,
    muon_momentum: float = 0.95,
    muon_weight_decay: float = 0.0,
    muon_ns: str = "quintic",
    normuon: bool = False,
) -> torch.optim.Optimizer | MuonAdamW:
    """The optimizer for ``model``; drive its rate with :func:`apply_lr` (peak ``lr``).

    ``adamw``: AdamW on everything, ``weight_decay`` on the hidden matrices only (``model.optimizer_groups``
    when the model defines it), the embeddings at ``embedding_lr`` (default ``lr``).
    ``muon``: Muon (``muon_lr``, ``muon_momentum``, Nesterov, ``muon_weight_decay``) on the hidden
    matrices, AdamW on the rest (see the module docstring). Learning rates are peak values. ``muon_ns``
    'polar_express' and ``normuon`` are the speedrun's Muon variants (:class:`Muon`).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"training.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not lr > 0:
        raise ValueError(f"training.learning_rate must be > 0, got {lr!r}")
    parts = split_parameters(model)
    emb_scale = (embedding_lr if embedding_lr is not None else lr) / lr
    adam_kwargs: dict[str, Any] = {"lr": lr, "betas": betas, "eps": eps}
    if optimizer == "adamw":
        groups_fn = getattr(model, "optimizer_groups", None)
        if embedding_lr is None and callable(groups_fn):
            groups: list[dict[str, Any]] = groups_fn(weight_decay)
        else:
            groups = [
                {"params": parts["hidden"], "weight_decay": weight_decay},
                {"params": parts["head"] + parts["other"], "weight_decay": 0.0},
                {"params": parts["embed"], "weight_decay": 0.0, "lr_scale": emb_scale},
            ]
        return _adamw([g for g in groups if g["params"]], **adam_kwargs)
    if not muon_lr > 0:
        raise ValueError(f"training.muon_lr must be > 0, got {muon_lr!r}")
    if not parts["hidden"]:
        raise ValueError("training.optimizer=muon: the model has no 2-D hidden weight matrices for Muon")
    if muon_ns not in MUON_NS:
        raise ValueError(f"training.muon_ns must be one of {', '.join(MUON_NS)}, got {muon_ns!r}")
    hidden: dict[str, Any] = {"params": parts["hidden"], "lr_scale": muon_lr / lr, "kind": "hidden"}
    if muon_ns == "polar_express":
        hidden["polar_express"] = True
    if normuon:
        hidden["normuon_beta2"] = betas[1]  # nanochat's 0.95, our beta2 default
    muon = Muon(
        [hidden],
        lr=muon_lr,
        momentum=muon_momentum,
        nesterov=True,
        weight_decay=muon_weight_decay,
    )
    # fused projections (attention's c_attn: q, k, v) say how their rows split
    muon.row_splits = {
        id(m.get_parameter("c_attn.weight")): tuple(getattr(m, "qkv_split"))  # noqa: B009
        for m in model.modules()
        if hasattr(m, "qkv_split")
    }
    adam_groups = [
        {"params": parts["embed"], "weight_decay": 0.0, "lr_scale": emb_scale, "kind": "embed"},
        {"params": parts["head"], "weight_decay": 0.0, "lr_scale": 1.0, "kind": "head"},
        {"params": parts["other"], "weight_decay": 0.0, "lr_scale": 1.0, "kind": "other"},
    ]
    return MuonAdamW(muon, _adamw([g for g in adam_groups if g["params"]], **adam_kwargs))
