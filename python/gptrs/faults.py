"""Named fault points: where a test harness may stop, slow down or fail gptrs on purpose.

The code that owns a risky moment (a checkpoint being written, a rename, a training step, the token cache
being built) calls ``faults.point("ckpt:state", path=...)`` there. Nothing happens unless a harness has
installed a hook with :func:`install`; then the hook sees the point's name and details and may record it,
sleep, or raise (an ``OSError(ENOSPC)`` to stand for a full disk, say). A harness that reaches into the code
through these names keeps working when private functions are renamed, and a point that disappears fails
the harness loudly (it never sees that name) instead of silently disabling a fault.

Points in use (``name``: where, and its details):

- ``tokenizer``, ``tokenizer_done``: training the run's tokenizer starts / ends.
- ``cache``, ``cache_done``: building the token cache starts / ends; ``cache:write`` (``path``) per chunk
  written.
- ``write`` and ``rename`` (``path``): before a file is fsync'd and before it is renamed into place
  (:func:`gptrs.files.atomic_path`, the token cache's staged files); for a checkpoint directory, before each
  of its renames and before the fsync of its parent that makes them durable.
- ``train``: the training loop starts or resumes after an evaluation or a checkpoint.
- ``step`` (``step``): a micro-batch starts (forward, backward, then on the last one the optimizer step).
- ``eval``: an evaluation starts.
- ``ckpt`` (``checkpoint``, ``step``), ``ckpt:model``, ``ckpt:state`` (``path``: the file about to be
  written), ``ckpt_done`` (``checkpoint``, ``step``): writing a checkpoint and its parts.
- ``prune`` (``path``): an old periodic checkpoint is about to be deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Hook = Callable[[str, dict[str, Any]], None]

_hook: Hook | None = None


def point(name: str, **info: Any) -> None:
    """A fault point; a no-op (one global read) unless a hook is installed."""
    if _hook is not None:
        _hook(name, info)


@contextlib.contextmanager
def install(hook: Hook) -> Iterator[None]:
    """Call ``hook(name, info)`` at every fault point while the block runs."""
    global _hook
    previous, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = previous


def set_hook(hook: Hook | None) -> None:
    """Install ``hook`` for the rest of the process (a harness's child process), or remove it with None."""
    global _hook
    _hook = hook
