"""When the trainer runs the model through ``torch.compile``, and keeping steps at full speed around evals.

``model.compile`` is true, false or null (the default): null compiles on CUDA, where it pays (the GPT-2
124M shape on an H200: ~12% more tokens/s; the default preset's run 520k -> 585k tok/s) for a one-time
cost of tens of seconds, and not on the CPU or MPS, where Inductor's code is slower to build than a
short run gains (and the CPU has hand-written kernels already). The trainer logs when it compiles.

The model is compiled once, and evaluation reuses the compiled module (``Trainer._eval_model``): its
eval-mode, no-grad graph is compiled at the first evaluation and then kept beside the training graph, so
the training step after an evaluation finds its own graph again (no recompilation; tested with dynamo's
counters). Evaluation and checkpoint writes take wall time between two training steps: :class:`Pause`
measures it, and the trainer leaves it out of the throughput of the next log line (before, the step after
each evaluation looked 4x slower, 1.0-1.2 s instead of 0.25 s on an H200: the evaluation's and the best
checkpoint's time were counted as that step's).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

import torch
from torch import nn

COMPILE_MESSAGE = "compiling the model (one-time, tens of seconds)"


def should_compile(setting: bool | None, device: torch.device) -> bool:
    """``model.compile`` resolved for ``device``: an explicit true/false wins; null means CUDA only."""
    if setting is None:
        return device.type == "cuda"
    return bool(setting)


def compile_model(model: nn.Module, log: logging.Logger) -> nn.Module:
    """``torch.compile(model)``, saying so first (the compile itself happens at the first step)."""
    log.info(COMPILE_MESSAGE)
    return torch.compile(model)  # type: ignore[return-value]


class Pause:
    """``with Pause() as p: ...`` then ``p.seconds``: wall time spent outside the training steps."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Pause:
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self._t0
