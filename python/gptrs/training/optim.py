"""The optimizer: AdamW with weight decay on matrices only, fused into one kernel where the device has one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gptrs.config import TrainingConfig


def build_optimizer(model: nn.Module, tc: TrainingConfig, device: torch.device) -> torch.optim.Optimizer:
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
    kwargs: dict[str, Any] = {"lr": tc.learning_rate, "betas": (tc.beta1, tc.beta2)}
    try:
        return torch.optim.AdamW(groups, fused=fused, **kwargs)
    except (RuntimeError, TypeError):  # an older torch without fused kernels for this device
        return torch.optim.AdamW(groups, **kwargs)
