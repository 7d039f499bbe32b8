"""The names of the files gptrs writes, and the one way it writes them: atomically and durably.

Every file a user may rely on after a crash (a checkpoint's parts, ``model.safetensors``/``model.json``,
the token cache, a tokenizer, an export, a run's ``config.yaml``) is written through :func:`atomic_path`:

1. the writer fills a temporary file beside the target (same directory, so the rename cannot cross file
   systems);
2. the temporary file is fsync'd, so its bytes are on disk before its name is;
3. it is renamed over the target (``os.replace``: readers see the old file or the new one, never a mix);
4. the directory is fsync'd, so the rename itself survives a power loss.

A write that fails (a full disk, a read-only directory) removes the temporary file and leaves the target
as it was. Libraries report a full disk in their own words (``torch.save`` raises ``RuntimeError``,
safetensors an ``Exception`` of its own); :func:`atomic_path` turns those into one ``OSError`` naming the
path and "no space left on device", so every caller can treat a full disk the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from gptrs import faults

# File names, in one place: a run directory, a checkpoint and a model directory share them.
MODEL_FILE = "model.safetensors"  # weights (safetensors; no pickle)
MODEL_JSON = "model.json"  # architecture + pad id, read by from_pretrained
CONFIG_FILE = "config.yaml"  # the run's full configuration
TOKENIZER_FILE = "tokenizer.json"  # gptrs_tok's own format
TRAINER_STATE = "trainer_state.pt"  # optimizer, RNG and sampler states (torch.load(weights_only=True))
CACHE_HEADER = "cache.json"  # the token cache's key and sizes
HF_CONFIG_FILE = "config.json"  # transformers' config, in an export
CHECKPOINTS_DIR = "checkpoints"  # under a run directory
METRICS_FILE = "metrics.jsonl"  # one JSON record per log line of a run

# Below this many free bytes, a failed write is taken to be a full disk whatever the library said.
_NEARLY_FULL = 1 << 20


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory. A file that cannot be flushed is an error (a full disk may only show up
    here, with delayed allocation); a directory that cannot be opened or synced (some file systems) is
    skipped, as that only costs the durability of a rename, never a torn file."""
    p = Path(path)
    is_dir = p.is_dir()
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(e: BaseException, where: str | os.PathLike[str]) -> bool:
    """Whether ``e`` (from writing under ``where``) means the disk is full, in any library's words."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    if "no space left" in text or "disk quota" in text or "enospc" in text:
        return True
    free = _free_bytes(Path(where))
    return free is not None and free < _NEARLY_FULL


def write_error(e: BaseException, path: str | os.PathLike[str]) -> OSError:
    """``e`` as one ``OSError`` line naming ``path``: a full disk says so, whatever raised it."""
    if is_disk_full(e, Path(path).parent):
        return OSError(errno.ENOSPC, f"cannot write {path}: no space left on device")
    if isinstance(e, OSError):
        code = e.errno
        if not code and (
            m := re.search(r"\(os error (\d+)\)", str(e))
        ):  # Rust's io::Error, as gptrs_tok raises it
            code = int(m[1])
        if code:  # the system's words, not the message's: that names the temporary file
            return OSError(code, f"cannot write {path}: {e.strerror or os.strerror(code)}")
        return OSError(f"cannot write {path}: {e}")
    return OSError(f"cannot write {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill; on success it replaces ``path``
    (fsync, rename, fsync of the directory). On failure the temporary file is removed and the error is
    raised as one ``OSError`` naming ``path`` (see :func:`write_error`)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        faults.point("write", path=target)
        fsync_path(tmp)
        faults.point("rename", path=target)
        os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException as e:
        # Judged before the temporary file goes: the space it frees could hide a full disk.
        err = (
            None if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)) else write_error(e, target)
        )
        with contextlib.suppress(OSError):
            tmp.unlink()
        if err is None:
            raise
        raise err from e


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))
