"""Training: the Trainer loop, its LR schedule, checkpoints, metrics, precision and distributed setup.

Names are imported lazily, so ``import gptrs.training.run_lock`` (say) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptrs.training.checkpoint import find_latest, list_checkpoints, resolve_model_dir
    from gptrs.training.lr_schedule import WarmupCosine, lr_at
    from gptrs.training.precision import Precision, resolve_precision
    from gptrs.training.run_lock import RunLock
    from gptrs.training.trainer import Trainer, TrainingInterrupted

_WHERE = {
    "Trainer": "trainer",
    "TrainingInterrupted": "trainer",
    "WarmupCosine": "lr_schedule",
    "lr_at": "lr_schedule",
    "Precision": "precision",
    "resolve_precision": "precision",
    "RunLock": "run_lock",
    "find_latest": "checkpoint",
    "list_checkpoints": "checkpoint",
    "resolve_model_dir": "checkpoint",
}

__all__ = [
    "Precision",
    "RunLock",
    "Trainer",
    "TrainingInterrupted",
    "WarmupCosine",
    "find_latest",
    "list_checkpoints",
    "lr_at",
    "resolve_model_dir",
    "resolve_precision",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"gptrs.training.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'gptrs.training' has no attribute {name!r}")
