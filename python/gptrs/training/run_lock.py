"""An exclusive lock on a run directory, held for the life of the training process.

``fcntl.flock`` on ``<run_dir>/.lock``: the kernel drops it when the process dies, however it dies, so a
killed run never leaves a stale lock behind; a second live run on the same directory gets a clear error
instead of two processes interleaving checkpoints. On platforms without ``fcntl`` the lock is a no-op.

A run takes it once: ``python -m gptrs.train`` before it writes the run's config and token cache, handing it
to the ``Trainer`` (``run_lock=``); a ``Trainer`` used alone takes it in ``train()``. Taking it twice in one
process fails like a second process would (``flock`` on a new descriptor conflicts with our own).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from gptrs.errors import GptrsError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir): ...`` or ``lock = RunLock(run_dir).acquire(); ...; lock.release()``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.read(fd, 64).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                who = f" (pid {holder})" if holder else ""
                raise GptrsError(
                    f"run directory {self.run_dir} is in use by another training process{who}; "
                    "wait for it to finish or choose another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
