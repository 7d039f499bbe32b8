"""Crash-safe checkpoints: one directory per checkpoint, written aside, fsync'd, then renamed into place.

Layout of ``<run_dir>/checkpoints/``::

    step_000500/   periodic (the newest ``keep_last`` are kept)
    best/          lowest validation loss so far
    last/          end of training, or where a signal stopped it
      model.safetensors, model.json   weights and architecture (``model.save_pretrained``)
      config.yaml                     the run's configuration
      tokenizer.json                  the tokenizer
      trainer_state.pt                optimizer, scaler, step, RNG and sampler states, metric history
      COMPLETE                        written last: JSON with the step and every file's size

A checkpoint is written into ``.tmp-<name>-<pid>`` in the same directory, every file and the directory
are fsync'd (files gptrs writes itself go through :func:`gptrs.files.atomic_path`), ``COMPLETE`` is
written, and only then is it renamed to its name. A write that fails (a full disk, whatever the library
writing the file calls it) removes the temporary directory and raises one ``OSError`` naming the file. Replacing ``best`` or
``last`` renames the old one aside first (``.old-<name>-<pid>``), renames the new one in, then deletes
the old one. A crash at any moment therefore leaves every checkpoint that carries a matching
``COMPLETE`` whole; discovery ignores dot-directories and anything without ``COMPLETE``, and
:func:`recover` finishes (or undoes) a replacement that a crash interrupted.

``trainer_state.pt`` is read with ``torch.load(weights_only=True)``: it holds only tensors and plain
containers (numpy arrays are stored as lists, see :func:`to_safe`), so loading one never runs code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gptrs import faults
from gptrs.errors import CheckpointError
from gptrs.files import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    TRAINER_STATE,
    atomic_path,
    atomic_write_text,
    fsync_path,
    is_disk_full,
    write_error,
)

__all__ = [  # the file names are re-exported: callers find them here beside the layout they name
    "CHECKPOINTS_DIR",
    "COMPLETE",
    "CONFIG_FILE",
    "DAMAGED_PREFIX",
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "TRAINER_STATE",
    "CheckpointInfo",
    "capture_rng_state",
    "damaged_checkpoints",
    "find_latest",
    "from_safe",
    "is_complete",
    "list_checkpoints",
    "load_model_weights",
    "load_trainer_state",
    "prune",
    "read_complete",
    "recover",
    "resolve_model_dir",
    "restore_rng_state",
    "save_checkpoint",
    "set_aside",
    "step_name",
    "to_safe",
    "why_incomplete",
]

COMPLETE = "COMPLETE"
DAMAGED_PREFIX = "damaged-"  # where a resumed run sets aside checkpoints it could not load (state.py)
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    name: str
    step: int


def step_name(step: int) -> str:
    return f"step_{step:06d}"


# ---------------------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Errors of a library writing ``path`` (its own file handling, not ``atomic_path``'s) as one OSError
    naming it; a full disk says so whatever the library called it. Other errors (bugs) pass unchanged."""
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) or is_disk_full(e, path.parent):
            raise write_error(e, path) from e
        raise


def _write_files(
    directory: Path, step: int, model: nn.Module, state: dict[str, Any], config: Any, tokenizer: Any
) -> None:
    """Every file of a checkpoint into ``directory``, each on disk (fsync'd) before ``COMPLETE`` is."""
    model_file = directory / MODEL_FILE
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained):
        with _writing(model_file):
            faults.point("ckpt:model", path=model_file)
            save_pretrained(directory)
    else:  # any nn.Module (e.g. a user's own model passed to the Trainer)
        from safetensors.torch import save_model

        with atomic_path(model_file) as tmp:
            faults.point("ckpt:model", path=tmp)
            save_model(model, str(tmp))
    if config is not None:
        from gptrs.config import save_config

        with _writing(directory / CONFIG_FILE):
            save_config(config, directory / CONFIG_FILE)
    if tokenizer is not None:
        with _writing(directory / TOKENIZER_FILE):
            tokenizer.save(str(directory / TOKENIZER_FILE))
    with atomic_path(directory / TRAINER_STATE) as tmp, open(tmp, "wb") as out:
        faults.point("ckpt:state", path=tmp)
        torch.save(state, out)  # a file object: the archive inside is named the same whatever the path
    sizes = {}
    for path in sorted(directory.iterdir()):
        with _writing(path):
            fsync_path(path)  # the model's, config's and tokenizer's own writers may not have
        sizes[path.name] = path.stat().st_size
    # COMPLETE goes last: its presence (with matching sizes) is what makes the directory count.
    atomic_write_text(directory / COMPLETE, json.dumps({"step": step, "files": sizes}))


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; an existing ``target`` is moved aside first and deleted
    after (:func:`recover` finishes the job if a crash falls between the renames)."""
    root = target.parent
    old = root / f".old-{target.name}-{os.getpid()}" if target.exists() else None
    if old is not None:
        if old.exists():
            shutil.rmtree(old)
        faults.point("rename", path=target)
        os.replace(target, old)
    faults.point("rename", path=target)
    os.replace(tmp, target)
    faults.point("write", path=root)  # the directory's fsync makes the renames durable
    fsync_path(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    root: str | os.PathLike[str],
    name: str,
    *,
    step: int,
    model: nn.Module,
    trainer_state: dict[str, Any],
    config: Any = None,
    tokenizer: Any = None,
) -> Path:
    """Write checkpoint ``root/name`` atomically (see the module docstring) and return its path.

    A failed write (a full disk, say) raises one ``OSError`` line naming the file and saying that the
    earlier checkpoints are intact: nothing of this one stays behind."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    faults.point("ckpt", checkpoint=name, step=step)
    try:
        _write_files(tmp, step, model, trainer_state, config, tokenizer)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"{e.strerror or e} (checkpoint {name}); the earlier checkpoints are intact"
        raise (OSError(e.errno, msg) if e.errno is not None else OSError(msg)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, target)
    faults.point("ckpt_done", checkpoint=name, step=step)
    return target


# ---------------------------------------------------------------------------------------------------------
# Discovery


def read_complete(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``COMPLETE`` record of a checkpoint directory, or None if it is missing, unreadable or if any
    file it lists is missing or has another size (a truncated or half-copied checkpoint)."""
    path = Path(path)
    try:
        record = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
        step = int(record["step"])
        for fname, size in dict(record["files"]).items():
            if (path / fname).stat().st_size != int(size):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"step": step, "files": record["files"]}


def is_complete(path: str | os.PathLike[str]) -> bool:
    return read_complete(path) is not None


def why_incomplete(path: str | os.PathLike[str]) -> str:
    """What keeps a checkpoint directory from counting as complete, in a few words."""
    path = Path(path)
    try:
        record = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
        files = dict(record["files"])
        int(record["step"])
    except FileNotFoundError:
        return f"no {COMPLETE} marker (its write was interrupted)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{COMPLETE} is unreadable"
    for fname, size in files.items():
        try:
            actual = (path / fname).stat().st_size
        except OSError:
            return f"{fname} is missing"
        if actual != int(size):
            return f"{fname} is {actual:,} bytes, {COMPLETE} says {int(size):,}"
    return "complete"


def damaged_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Directories under ``root`` that are checkpoints by name but not complete (a truncated or half-copied
    file, a missing marker): never counted, and never to be replaced as if they were not there."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith((".", DAMAGED_PREFIX))
        and (d.name in ("best", "last") or _STEP_RE.match(d.name) or (d / COMPLETE).exists())
        and not is_complete(d)
    )


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that could not be loaded to ``damaged-<name>`` beside it, so that later saves and
    pruning never replace or delete it; returns the new path."""
    target = path.parent / f"{DAMAGED_PREFIX}{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = path.parent / f"{DAMAGED_PREFIX}{path.name}-{n}"
    os.replace(path, target)
    fsync_path(path.parent)
    return target


def list_checkpoints(root: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Complete checkpoints under ``root`` (a ``checkpoints/`` directory), oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.name.startswith((".", DAMAGED_PREFIX)) or not d.is_dir():
            continue
        record = read_complete(d)
        if record is not None:
            found.append(CheckpointInfo(d, d.name, record["step"]))
    # Among equal steps prefer 'last', then periodic, then 'best' (they hold the same state anyway).
    order = {"best": 0, "last": 2}
    return sorted(found, key=lambda c: (c.step, order.get(c.name, 1), c.name))


def find_latest(root: str | os.PathLike[str]) -> CheckpointInfo | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A directory to load a model from: a checkpoint itself, or a run directory (then its ``best``
    checkpoint, else ``last``, else the newest complete one). Raises CheckpointError otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a checkpoint or run directory)")
    if (path / MODEL_FILE).exists():
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        for name in ("best", "last"):
            if is_complete(root / name):
                return root / name
        latest = find_latest(root)
        if latest is not None:
            return latest.path
    raise CheckpointError(
        f"{path}: not a checkpoint (no {MODEL_FILE}) and no complete checkpoint under {path / CHECKPOINTS_DIR}"
    )


# ---------------------------------------------------------------------------------------------------------
# Housekeeping (only the process that holds the run lock calls these)


def recover(root: str | os.PathLike[str]) -> list[str]:
    """Finish replacements a crash interrupted and delete leftover temporary directories.

    If ``best``/``last`` is missing, a complete ``.tmp-<name>-*`` (the newer one) is renamed in, else a
    complete ``.old-<name>-*`` is renamed back. Returns a line per action, for the log.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    actions = []
    leftovers = sorted(d for d in root.iterdir() if d.is_dir() and re.match(r"^\.(tmp|old)-", d.name))
    for prefix in (".tmp-", ".old-"):
        for d in leftovers:
            if not d.name.startswith(prefix) or not d.exists():
                continue
            name = d.name[len(prefix) :].rsplit("-", 1)[0]
            target = root / name
            if not target.exists() and is_complete(d):
                os.replace(d, target)
                actions.append(f"restored {target.name} from {d.name}")
    for d in leftovers:
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
            actions.append(f"removed incomplete {d.name}")
    if actions:
        fsync_path(root)
    return actions


def prune(root: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic ``step_*`` checkpoints; return what was deleted."""
    root = Path(root)
    periodic = sorted(
        (int(m.group(1)), d)
        for d in (root.iterdir() if root.is_dir() else [])
        if (m := _STEP_RE.match(d.name)) and d.is_dir()
    )
    doomed = [d for _, d in periodic[: max(0, len(periodic) - keep_last)]]
    for d in doomed:
        faults.point("prune", path=d)
        # Rename first so a crash mid-delete never leaves a step_ dir with COMPLETE but missing files.
        trash = root / f".old-{d.name}-{os.getpid()}"
        os.replace(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


# ---------------------------------------------------------------------------------------------------------
# Loading


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line (torch spreads load_state_dict errors over several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``trainer_state.pt`` of a checkpoint directory with ``weights_only=True``."""
    f = Path(path) / TRAINER_STATE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (not a training checkpoint)")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as e:
        # torch's own message suggests weights_only=False, exactly what must not be done with an untrusted
        # file; keep only the part that says what was found.
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(e))
        detail = f" (it asks to import {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{f}: not a valid trainer state{detail}: corrupt, not written by gptrs, or holding objects "
            "other than tensors and plain data (refused without running anything)"
        ) from e
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{f}: not a valid trainer state: no 'step' entry")
    return state


def load_model_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint's ``model.safetensors`` into ``model`` in place (exact: same dtype, no rounding).

    A gptrs model is read by the loader every path uses (``gptrs.model.serialization``): names, shapes,
    dtypes and finite values are checked there, so a checkpoint with NaN/inf weights is refused naming the
    tensor. Any other ``nn.Module`` (a user's own, saved with ``safetensors.torch.save_model``) is read by
    safetensors' own loader."""
    f = Path(path) / MODEL_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    if callable(getattr(model, "save_pretrained", None)):
        from gptrs.model.serialization import read_weights

        model.load_state_dict(read_weights(model, f), strict=False)  # tied names share one tensor
        return
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(f), strict=False)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{f}: cannot load weights: {_first_line(e)}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{f}: weights do not match the model (missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )


# ---------------------------------------------------------------------------------------------------------
# weights_only-safe state: numpy arrays become tagged lists; RNG states


def to_safe(obj: Any) -> Any:
    """Convert numpy arrays/scalars inside ``obj`` to plain Python so ``torch.load(weights_only=True)``
    accepts it; :func:`from_safe` undoes it."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.ravel().tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_safe(v) for v in obj)
    return obj


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": to_safe(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(from_safe(state["numpy"])))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
