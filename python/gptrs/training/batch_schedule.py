"""Batch-size schedule (``training.batch_size_schedule``): how many sequences of each micro-batch a step
trains on, in equal stages of the run (modded-nanogpt's record 'Batch size schedule', Nov 2025).

Early in training the gradient of a few sequences already points the right way, so a smaller batch buys
nearly the same progress per step for less compute; later the noise of a small batch costs more than its
compute saves. The loader keeps its ``batch_size``: a stage takes the first rows of each micro-batch and
leaves the rest (random windows, so nothing is biased). Like the learning rate it is a pure function of the
step, so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence


def batch_rows_at(step: int, schedule: Sequence[int], max_steps: int) -> int | None:
    """Sequences per micro-batch at optimizer step ``step`` (0-based): ``schedule[i]`` for the i-th of
    ``len(schedule)`` equal stages of ``max_steps`` (past the end, the last); None: no schedule."""
    if not schedule:
        return None
    stage = min(len(schedule) - 1, max(0, step) * len(schedule) // max(1, max_steps))
    return schedule[stage]
