"""The optimizer the trainer uses, as ``training.optimizer`` says: AdamW, or Muon + AdamW (``muon.py``).

``adamw`` (with no ``embedding_lr``) is the original recipe: AdamW with weight decay on matrices only,
fused into one kernel where the device has one. ``muon`` (or ``adamw`` with its own embedding rate) is built
by :func:`gptrs.training.muon.build_optimizer`, whose groups carry ``lr_scale``: the trainer sets every
group's rate with :func:`~gptrs.training.muon.apply_lr`, so one schedule drives every group in proportion.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from gptrs.config import TrainingConfig
from gptrs.training import muon
from gptrs.training.muon import apply_lr

__all__ = ["apply_lr", "build_optimizer"]


def build_optimizer(model: nn.Module, tc: TrainingConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``tc`` describes over ``model``'s parameters (learning rates are the peaks).

    With ``muon`` it is a :class:`~gptrs.training.muon.MuonAdamW`, typed here as an Optimizer: it has all
    the trainer, its checkpoints and ``torch.amp.GradScaler`` use of one (``param_groups``, ``step``,
    ``zero_grad``, ``state_dict``, ``load_state_dict``), so fp16 with a gradient scaler works too.
    """
    if tc.optimizer == "muon" or tc.embedding_lr is not None:
        built = muon.build_optimizer(
            model,
            optimizer=tc.optimizer,
            lr=tc.learning_rate,
            weight_decay=tc.weight_decay,
            betas=(tc.beta1, tc.beta2),
            eps=tc.adam_eps,
            embedding_lr=tc.embedding_lr,
            muon_lr=tc.muon_lr,
            muon_momentum=tc.muon_momentum,
            muon_weight_decay=tc.weight_decay,
            muon_ns=tc.muon_ns,
            normuon=tc.normuon,
        )
        return cast(torch.optim.Optimizer, built)
    return _adamw(model, tc, device)


def _adamw(model: nn.Module, tc: TrainingConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters: its own ``optimizer_groups(weight_decay)`` when it has them (a
    gptrs ``GPT`` does), else decay on every parameter with two or more dimensions (matrices, embeddings)."""
    groups_fn = getattr(model, "optimizer_groups", None)
    if callable(groups_fn):
        groups = groups_fn(tc.weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": tc.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    # Fused AdamW: one kernel for all parameters (CUDA, and CPU since torch 2.4); much faster than the
    # per-parameter loop, and deterministic, so resumes stay bitwise exact.
    fused = device.type in ("cuda", "cpu") and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16) for g in groups for p in g["params"]
    )
    kwargs: dict[str, Any] = {"lr": tc.learning_rate, "betas": (tc.beta1, tc.beta2), "eps": tc.adam_eps}
    try:
        return torch.optim.AdamW(groups, fused=fused, **kwargs)
    except (RuntimeError, TypeError):  # an older torch without fused kernels for this device
        return torch.optim.AdamW(groups, **kwargs)
