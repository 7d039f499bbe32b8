"""Learning-rate schedule: linear warmup to the peak, then cosine decay to a floor over the rest of the run,
or (``training.warmdown_ratio``) the peak held and a linear warmdown to the floor over the run's last part.

The rate is a pure function of the optimizer step, so a resumed run needs nothing but the step
to continue the schedule exactly (no scheduler object to save beyond the step count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptrs.errors import GptrsError

if TYPE_CHECKING:
    from gptrs.config import TrainingConfig


def lr_at(
    step: int,
    *,
    max_lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    warmdown_steps: int | None = None,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the step about to be taken).

    Steps ``0 .. warmup_steps-1`` ramp linearly up to ``max_lr`` (the first step already gets
    ``max_lr / warmup_steps``, never 0, so no step is wasted); then a half cosine goes from
    ``max_lr`` down to ``min_lr``, reached at ``max_steps``; past ``max_steps`` the rate stays at
    ``min_lr``. With ``warmdown_steps`` the rate stays at ``max_lr`` instead until the last
    ``warmdown_steps`` steps, which go linearly down to ``min_lr`` (reached at ``max_steps``): the
    "warmup-stable-decay" shape of modded-nanogpt and nanochat, which keeps the rate high for longer.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if warmdown_steps is not None:
        left = max_steps - step  # steps still to take, this one included
        if left >= warmdown_steps:
            return max_lr
        return min_lr + (max_lr - min_lr) * max(0, left) / max(1, warmdown_steps)
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@dataclass(frozen=True)
class WarmupCosine:
    """The schedule bound to its settings; ``schedule(step)`` gives the rate for that step."""

    max_lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    warmdown_steps: int | None = None  # training.warmdown_ratio of max_steps; None: cosine

    def __call__(self, step: int) -> float:
        return lr_at(
            step,
            max_lr=self.max_lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            max_steps=self.max_steps,
            warmdown_steps=self.warmdown_steps,
        )

    def state_dict(self) -> dict[str, float | int]:
        state: dict[str, float | int] = {
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "max_steps": self.max_steps,
        }
        if self.warmdown_steps is not None:
            state["warmdown_steps"] = self.warmdown_steps
        return state


def total_steps(tc: TrainingConfig, loader: Iterable[Any]) -> int:
    """Optimizer steps of a run: ``training.max_steps``, or with ``training.epochs`` as many as that many
    passes over ``loader`` take (a gptrs ``EpochBatches`` counts its passes itself)."""
    if tc.epochs is None:
        return tc.max_steps
    total = getattr(loader, "total_batches", None)
    if total is None:
        try:
            total = tc.epochs * len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise GptrsError(
                "training.epochs needs a training loader with a length (batches per epoch)"
            ) from None
    return max(1, math.ceil(total / tc.gradient_accumulation_steps))
