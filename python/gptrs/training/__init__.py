"""Training: the Trainer loop, its LR schedule, checkpoints, metrics, precision and distributed setup."""

from gptrs.training.checkpoint import find_latest, list_checkpoints, resolve_model_dir
from gptrs.training.lr_schedule import WarmupCosine, lr_at
from gptrs.training.precision import Precision, resolve_precision
from gptrs.training.run_lock import RunLock
from gptrs.training.trainer import Trainer, TrainingInterrupted

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
