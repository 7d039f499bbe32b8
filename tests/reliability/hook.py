"""The child side of the crash harness: a :mod:`gptrs.faults` hook installed into a training process.

:func:`child_main` runs ``python -m gptrs.train ARGV`` with the hook that the ``GPTRS_RELIABILITY_HOOKS``
environment variable describes (JSON). Everything goes through the named fault points of ``gptrs.faults``;
nothing of gptrs is patched, so renaming a private function cannot silently disable a fault.

- ``phase_file``: each phase is appended as a line when it starts (``step``, ``eval``, ``ckpt:last``,
  ``ckpt:model``, ``ckpt:fsync``, ``ckpt:rename``, ``ckpt_done:last:12``, ``cache:write``, ...); the parent
  aims its kills by them.
- ``points_file``: the name of every fault point this process reached, once each, so the parent can fail
  loudly when a point it relies on is never reached.
- ``slow``: seconds slept at each stage of a checkpoint or cache write, to widen the windows a kill should
  land in.
- ``enospc`` (``ckpt_model``, ``ckpt_state``, ``ckpt_fsync`` or ``cache``) with ``enospc_at`` (the n-th
  checkpoint, counting from 1, or the n-th chunk of the token cache): fail that write with
  ``OSError(ENOSPC)`` as a full disk would. ``ckpt_model``/``ckpt_state``/``cache`` leave a partial file
  behind; ``ckpt_fsync`` fails the first fsync of the checkpoint (delayed allocation finding the disk full
  only then). The phase file gets an ``enospc:<kind>`` line when the fault fires.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOOK_ENV = "GPTRS_RELIABILITY_HOOKS"

# What a full disk leaves behind: the first bytes of each file, then nothing.
_PARTIAL = {
    "ckpt_model": b"\x08\x00\x00\x00\x00\x00\x00\x00{",  # a safetensors header length, then a cut
    "ckpt_state": b"PK\x03\x04",  # the start of torch.save's zip archive
    "cache": b"\x00\x01",
}


class Hook:
    """The fault hook (see the module docstring): ``hook(name, info)`` at every fault point."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.phases = os.open(spec["phase_file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        points = spec.get("points_file") or spec["phase_file"] + ".points"
        self.points = os.open(points, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.seen: set[str] = set()
        self.slow = float(spec.get("slow", 0.0))
        self.enospc, self.enospc_at = spec.get("enospc"), int(spec.get("enospc_at", 1))
        self.scope = ""  # the write in progress: "cache", "ckpt", "prune" or none
        self.ckpts = 0
        self.checkpoint = ""  # the name of the checkpoint being written
        self.chunks = 0

    def mark(self, phase: str) -> None:
        os.write(self.phases, (phase + "\n").encode())

    def nap(self) -> None:
        if self.slow:
            time.sleep(self.slow)

    def disk_full(self, kind: str, path: Any = None) -> OSError:
        """The error a full disk raises, after leaving the partial file it would leave."""
        if path is not None and kind in _PARTIAL:
            with open(path, "wb") as f:
                f.write(_PARTIAL[kind])
        self.mark(f"enospc:{kind}")
        self.enospc = None  # once
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full(self, kind: str, count: int) -> bool:
        """Whether the fault ``kind`` is due now (``count``: checkpoints or cache chunks so far)."""
        return self.enospc == kind and count == self.enospc_at

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name not in self.seen:
            self.seen.add(name)
            os.write(self.points, (name + "\n").encode())
        if name in ("tokenizer", "eval"):
            self.mark(name)
            self.nap()
        elif name in ("tokenizer_done", "cache_done", "train", "step"):
            self.scope = ""
            self.mark(name)
        elif name == "cache":
            self.scope = "cache"
            self.mark(name)
            self.nap()
        elif name == "cache:write":
            self.chunks += 1
            self.mark(name)
            if self.full("cache", self.chunks):
                raise self.disk_full("cache", info["path"])
            self.nap()
        elif name == "ckpt":
            self.scope, self.ckpts, self.checkpoint = "ckpt", self.ckpts + 1, info["checkpoint"]
            self.mark(f"ckpt:{self.checkpoint}")
        elif name in ("ckpt:model", "ckpt:state"):
            self.mark(name)
            kind = name.replace(":", "_")
            if self.full(kind, self.ckpts):
                raise self.disk_full(kind, info["path"])
            self.nap()
        elif name == "ckpt_done":
            self.scope = ""
            self.mark(f"ckpt_done:{info['checkpoint']}:{info['step']}")
        elif name == "prune":
            self.scope = "prune"
            self.mark(name)
            self.nap()
        elif name == "write" and self.scope in ("cache", "ckpt"):
            self.mark(f"{self.scope}:fsync")
            if self.scope == "ckpt" and self.full("ckpt_fsync", self.ckpts):
                raise self.disk_full("ckpt_fsync")
            self.nap()
        elif name == "rename" and self.scope in ("cache", "ckpt"):
            # In a checkpoint only the renames of the directory itself (replacing best/last) are the
            # "rename" window; a file's rename inside the temporary directory belongs to its write.
            if self.scope == "cache" or Path(info["path"]).name == self.checkpoint:
                self.mark(f"{self.scope}:rename")
            self.nap()


def child_main(argv: Sequence[str]) -> int:
    """``python -m gptrs.train ARGV`` with the hook of ``$GPTRS_RELIABILITY_HOOKS`` installed."""
    from gptrs import faults

    spec = os.environ.get(HOOK_ENV)
    if spec:
        faults.set_hook(Hook(json.loads(spec)))
    from gptrs.train import main

    return main(list(argv))


def read_points(phase_file: Path) -> set[str]:
    """The fault points the hooked processes writing ``phase_file`` reached."""
    try:
        return set(Path(str(phase_file) + ".points").read_text().split())
    except FileNotFoundError:
        return set()
