"""What a checkpoint remembers of a training run (``trainer_state.pt``), and resuming from it.

``trainer_state.pt`` holds, besides the optimizer, scheduler and scaler states:

- the run's :class:`Counters` (step, tokens seen, best validation loss, early-stopping count, and the
  training losses summed since the last log line);
- per rank, the RNG states (torch, numpy, Python, CUDA) and the position of its :class:`BatchStream`;
- the metric history (every record logged so far), the precision and the world size.

:func:`restore` brings all of it back, so on CPU a resumed run's losses and final weights are bitwise those of a
run that never stopped. Checkpoint files themselves (layout, atomic writes, discovery) are ``checkpoint.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gptrs.config import Config
from gptrs.errors import CheckpointError, GptrsError
from gptrs.training import checkpoint as ckpt
from gptrs.training.distributed import DistInfo
from gptrs.training.lr_schedule import WarmupCosine

log = logging.getLogger("gptrs.train")

STATE_VERSION = 1


@dataclass
class Counters:
    """Where a run stands; saved with every checkpoint (in this order, as the first entries of its state)."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    bad_evals: int = 0
    # Training losses summed since the last log line (their mean is what gets logged). Saved with
    # checkpoints, so a run resumed between two log lines logs exactly what the unbroken run logs.
    interval_loss: float = 0.0
    interval_steps: int = 0

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Counters:
        return cls(
            step=int(state["step"]),
            tokens=int(state.get("tokens", 0)),
            best_val_loss=float(state.get("best_val_loss", math.inf)),
            bad_evals=int(state.get("bad_evals", 0)),
            interval_loss=float(state.get("interval_loss", 0.0)),
            interval_steps=int(state.get("interval_steps", 0)),
        )


class BatchStream:
    """An endless stream over a training loader: a finite loader (a DataLoader, an epoch sampler) is
    restarted at its end, counting epochs. Its state is the loader's own ``state_dict()`` when it has
    one; otherwise the position in the epoch, replayed on resume (exact for deterministic loaders)."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.epoch = 0
        self.in_epoch = 0
        self._it: Iterator[Any] | None = None
        self.exhausted = False

    def next(self) -> Any:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            if self.in_epoch == 0:
                self.exhausted = True
                raise
            self.epoch += 1
            self.in_epoch = 0
            self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:  # a one-shot iterator (e.g. a generator): the data has run out
                self.exhausted = True
                raise
        self.in_epoch += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "in_epoch": self.in_epoch}
        sd = getattr(self.loader, "state_dict", None)
        if callable(sd):
            state["loader"] = ckpt.to_safe(sd())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        lsd = getattr(self.loader, "load_state_dict", None)
        if "loader" in state and callable(lsd):
            lsd(ckpt.from_safe(state["loader"]))
            self.in_epoch = int(state["in_epoch"])
            self._it = None
            return
        # No sampler state to restore: replay the epoch's batches up to where the checkpoint was.
        self._it = iter(self.loader)
        self.in_epoch = 0
        for _ in range(int(state["in_epoch"])):
            next(self._it)
            self.in_epoch += 1


# ---------------------------------------------------------------------------------------------------------
# Saving


def gather_rank_states(stream: BatchStream, info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG states and stream position, in rank order (a collective: all ranks call it)."""
    mine = {"rng": ckpt.capture_rng_state(), "data": stream.state_dict()}
    if not info.is_distributed:
        return [mine]
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def trainer_state(
    counters: Counters,
    history: list[dict[str, Any]],
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    schedule: WarmupCosine,
    precision: str,
    ranks: list[dict[str, Any]],
) -> dict[str, Any]:
    """The contents of ``trainer_state.pt`` (plain data and tensors: it loads with ``weights_only=True``)."""
    return {
        "version": STATE_VERSION,
        **dataclasses.asdict(counters),
        "optimizer": optimizer.state_dict(),
        "scheduler": {**schedule.state_dict(), "step": counters.step},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "precision": precision,
        "world_size": len(ranks),
        "ranks": ranks,
        "history": list(history),
    }


# ---------------------------------------------------------------------------------------------------------
# Resuming


def seed_everything(seed: int, rank: int) -> None:
    seed = seed + rank  # each rank its own dropout masks
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# Tokenizer settings a run keeps: its tokenizer was built (or read) once, at the start, and a resumed run
# reuses that file, so a changed value would not apply; it would only make the run's config.yaml wrong.
TOKENIZER_KEYS = ("vocab_size", "pattern", "min_frequency", "special_tokens", "path")


def check_same_model(path: Path, config: Config) -> None:
    """A checkpoint of another architecture, or of another tokenizer, is a user error worth naming precisely:
    ``<ckpt> was trained with another model config (model.num_layers: 2 there, 1 here)``."""
    saved = path / ckpt.CONFIG_FILE
    if not saved.is_file():
        return
    from gptrs.config import config_to_dict, load_config, resolve_model
    from gptrs.config.problems import brief

    theirs, ours = config_to_dict(load_config(saved)), config_to_dict(config)
    for side, cfg in ((theirs, load_config(saved)), (ours, config)):  # null switches: what arch makes them
        side["model"] = dataclasses.asdict(resolve_model(cfg.model))
    ignored = {"compile", "gradient_checkpointing", "dropout", "attention"}  # same weights either way

    def diff(section: str, keys: Iterable[str]) -> list[str]:
        a, b = theirs[section], ours[section]
        return [
            f"{section}.{k}: {brief(a.get(k))} there, {brief(b.get(k))} here"
            for k in keys
            if a.get(k) != b.get(k)
        ]

    model = diff("model", [k for k in ours["model"] if k not in ignored])
    tokenizer = diff("tokenizer", TOKENIZER_KEYS)
    if model:
        raise CheckpointError(
            f"{path} was trained with another model config ({'; '.join(model + tokenizer)})"
        )
    if tokenizer:
        raise CheckpointError(
            f"{path} was trained with another tokenizer config ({'; '.join(tokenizer)}): the run keeps its "
            "tokenizer; resume with the run's settings, or start a new run (another --out)"
        )


def _why(path: Path, e: BaseException) -> str:
    """A load error of checkpoint ``path`` without the path in front (the message names the checkpoint)."""
    return str(e).replace(f"{path}/", "").replace(f"{path}: ", "").replace(str(path), path.name)


def check_resumable(run_dir: Path, config: Config) -> list[str]:
    """Before a resumed run writes anything (its config.yaml included): refuse a config whose model or
    tokenizer differs from the checkpoint's (see ``check_same_model``), or a run none of whose checkpoints
    loads (each is read: trainer state and weights, the finite check included). Returns the settings that
    differ from the checkpoint's (``training.max_steps: 3 -> 6``): they apply from the resumed step on."""
    from gptrs.model import load_model

    root = run_dir / ckpt.CHECKPOINTS_DIR
    found = [c.path for c in reversed(ckpt.list_checkpoints(root))]
    failed = [(d, ckpt.why_incomplete(d)) for d in ckpt.damaged_checkpoints(root)]
    if found:
        check_same_model(found[0], config)
    good = None
    for path in found:
        try:
            ckpt.load_trainer_state(path)
            load_model(path)
        except CheckpointError as e:
            failed.append((path, _why(path, e)))
            continue
        good = path
        break
    if good is None:
        if failed:
            raise _none_loads(root, failed)
        return []
    saved = good / ckpt.CONFIG_FILE
    if not saved.is_file():
        return []
    from gptrs.config import config_to_dict, load_config, resolve_model
    from gptrs.config.problems import brief

    theirs, ours = config_to_dict(load_config(saved)), config_to_dict(config)
    for side, cfg in ((theirs, load_config(saved)), (ours, config)):  # null switches: what arch makes them
        side["model"] = dataclasses.asdict(resolve_model(cfg.model))
    return [
        f"{section}.{k}: {brief(theirs[section].get(k))} -> {brief(v)}"
        for section in ours
        for k, v in ours[section].items()
        if theirs.get(section, {}).get(k) != v
    ]


def _candidates(
    resume: bool | str | os.PathLike[str], checkpoint_dir: Path | None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Checkpoints to resume from, newest first (the one named, or every complete one of the run), and the
    run's damaged ones with what is wrong with each. A run whose checkpoints are all damaged is refused: it
    must not start over and then write new checkpoints over the old ones."""
    if isinstance(resume, (str, os.PathLike)):
        path = Path(resume)
        if not ckpt.is_complete(path):
            raise CheckpointError(f"{path}: not a complete checkpoint ({ckpt.why_incomplete(path)})")
        return [path], []
    if checkpoint_dir is None:
        raise GptrsError("resume=True needs a run_dir to find checkpoints in")
    found = [c.path for c in reversed(ckpt.list_checkpoints(checkpoint_dir))]
    damaged = [(d, ckpt.why_incomplete(d)) for d in ckpt.damaged_checkpoints(checkpoint_dir)]
    if not found and damaged:
        raise _none_loads(checkpoint_dir, damaged)
    if not found:
        log.info("no checkpoint in %s yet; starting from scratch", checkpoint_dir)
    return found, damaged


def _none_loads(checkpoint_dir: Path, damaged: list[tuple[Path, str]]) -> CheckpointError:
    what = "; ".join(f"{p.name}: {why if len(why) <= 100 else why[:97] + '...'}" for p, why in damaged)
    return CheckpointError(
        f"cannot resume: no checkpoint in {checkpoint_dir} loads ({what}); nothing was changed. Start a fresh "
        "run with another --out, or move the damaged checkpoints out of there to start over in this one"
    )


def _load(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> dict[str, Any]:
    """Weights, optimizer and scaler from checkpoint ``path``; returns its trainer state."""
    state = ckpt.load_trainer_state(path)
    if int(state.get("version", 0)) > STATE_VERSION:
        raise CheckpointError(
            f"{path}: trainer state version {state.get('version')} is newer than this gptrs"
        )
    ckpt.load_model_weights(model, path)
    # The config's hyperparameters (weight decay, betas, ...: what the user may have edited before resuming)
    # win over the saved ones; the learning rate is set every step anyway.
    configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(optimizer.param_groups, configured, strict=True):
            group.update(settings)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this model: {e}") from None
    return state


@dataclass
class Restored:
    """What :func:`restore` brought back, and the newer checkpoints it skipped (for the caller to set aside)."""

    counters: Counters
    history: list[dict[str, Any]]
    path: Path
    skipped: list[Path]


def restore(
    resume: bool | str | os.PathLike[str],
    checkpoint_dir: Path | None,
    *,
    model: nn.Module,
    config: Config,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    stream: BatchStream,
    info: DistInfo,
) -> Restored | None:
    """Restore a run from its newest readable checkpoint (``resume`` a path: from that one): weights,
    optimizer, scaler, this rank's RNG and stream position. Returns None when the run has no checkpoint yet.
    A damaged checkpoint (incomplete, unreadable, non-finite weights) is skipped for the next older one
    with a WARNING naming it; when none loads, CheckpointError names each and nothing is changed."""
    candidates, damaged = _candidates(resume, checkpoint_dir)
    if not candidates:
        return None
    check_same_model(candidates[0], config)
    for path, why in damaged:
        log.warning("skipping damaged checkpoint %s: %s", path, why)
    skipped = [p for p, _ in damaged]
    failed = list(damaged)
    for path in candidates:
        try:
            state = _load(path, model, optimizer, scaler)
            break
        except CheckpointError as e:
            why = _why(path, e)
            failed.append((path, why))
            skipped.append(path)
            log.warning("skipping checkpoint %s: %s", path, why)
    else:
        if checkpoint_dir is None or isinstance(resume, (str, os.PathLike)):
            raise CheckpointError(f"{candidates[0]}: cannot resume from it: {failed[-1][1]}")
        raise _none_loads(checkpoint_dir, failed)
    counters = Counters.from_state(state)
    ranks = state.get("ranks", [])
    if len(ranks) == info.world_size:
        mine = ranks[info.rank]
        try:
            ckpt.restore_rng_state(mine["rng"])
            stream.load_state_dict(mine["data"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path}: RNG or sampler state does not fit this run: {e}") from None
    else:
        log.warning(
            "checkpoint was written by %d process(es), this run has %d: RNG and sampler states "
            "are reseeded, so the resumed run is not an exact continuation",
            len(ranks),
            info.world_size,
        )
        seed_everything(config.training.seed + 1000 * counters.step, info.rank)
    if skipped:
        names = ", ".join(p.name for p in skipped)
        log.warning("resumed from %s at step %d, skipping %s", path, counters.step, names)
    else:
        log.info("resumed from %s at step %d", path, counters.step)
    return Restored(counters, list(state.get("history", [])), path, skipped)
