"""SIGINT/SIGTERM during training: finish the current step, save a checkpoint, then stop.

The first signal only sets a flag that the training loop checks after each step (on every rank, so all
of them stop at the same step); a second one stops at once with ``KeyboardInterrupt``, leaving the
checkpoints already on disk intact. :class:`TrainingInterrupted` is what ``Trainer.train`` raises then.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from tqdm import tqdm


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (``checkpoint``; None without a run dir)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"; checkpoint saved to {checkpoint} (continue with --resume)" if checkpoint else ""
        super().__init__(f"stopped by {name} at step {step}{where}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Catches SIGINT/SIGTERM while :meth:`handling` is active; ``signum`` is the first one received."""

    def __init__(self, *, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce  # rank 0 says what is happening; the other ranks stay quiet

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: stop now (checkpoints on disk stay intact)
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping without a checkpoint")
        self.signum = signum
        if self.announce:
            tqdm.write(
                f"received {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                "(send it again to stop at once)",
                file=sys.stderr,
            )

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Install the handlers for the block (only the main thread can; elsewhere signals are left alone)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
