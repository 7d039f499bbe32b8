"""The training loop: ``Trainer(model, tokenizer, config).train(train_batches, eval_batches)``.

One optimizer step = ``gradient_accumulation_steps`` micro-batches (loss / k each; under DDP gradients
are synchronised on the last micro-step only), then clipping, then AdamW (fused where the device has
it) at the rate of the warmup + cosine schedule. Every ``log_interval`` steps the metrics go to the
progress bar, the log, ``metrics.jsonl`` and TensorBoard; every ``eval_interval`` steps the validation
set is scored (loss, perplexity, bits per byte) and early stopping is decided; checkpoints are written
every ``save_interval`` steps, on a new best validation loss, at the end, and when SIGINT/SIGTERM asks
the run to stop (the current step is finished first).

Resuming restores weights, optimizer, scaler, step, every RNG and the batch sampler, so on CPU a
resumed run's losses and final weights are bitwise those of a run that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gptrs.config import Config
from gptrs.errors import CheckpointError, DataError, GptrsError
from gptrs.host_memory import tune_host_allocator
from gptrs.training import checkpoint as ckpt
from gptrs.training.distributed import (
    all_reduce_mean,
    any_rank,
    barrier,
    current_dist_info,
    setup_distributed,
)
from gptrs.training.lr_schedule import WarmupCosine
from gptrs.training.metrics import (
    LOSS_PLOT_FILE,
    METRICS_FILE,
    MetricsLogger,
    measure_peak_flops,
    memory_bytes,
    plot_loss_curves,
    truncate_metrics,
)
from gptrs.training.precision import resolve_precision
from gptrs.training.run_lock import RunLock

log = logging.getLogger("gptrs.train")

STATE_VERSION = 1


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (``checkpoint``; None without a run dir)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"; checkpoint saved to {checkpoint} (continue with --resume)" if checkpoint else ""
        super().__init__(f"stopped by {name} at step {step}{where}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a tuple/list pair or a dict with input_ids and labels/targets."""
    if isinstance(batch, dict):
        x = batch.get("input_ids")
        y = batch.get("labels", batch.get("targets"))
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
    else:
        raise DataError(
            f"a training batch must be an (inputs, targets) pair or a dict with input_ids and labels, got {type(batch).__name__}"
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError("a batch's inputs and targets must be tensors of token ids")
    return x, y


def _loss_of(out: Any) -> torch.Tensor:
    """The loss from a model's output: ``(logits, loss)`` (gptrs/nanoGPT), a tensor, or an object with ``.loss``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], torch.Tensor):
        return out[1]
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    raise TypeError(
        "model(inputs, targets) must return (logits, loss), a loss tensor, or an object with .loss"
    )


class _BatchStream:
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


@dataclass
class _Counters:
    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    bad_evals: int = 0
    # Training losses summed since the last log line (their mean is what gets logged). Saved with
    # checkpoints, so a run resumed between two log lines logs exactly what the unbroken run logs.
    interval_loss: float = 0.0
    interval_steps: int = 0


class Trainer:
    """Train ``model`` on ``(inputs, targets)`` batches as ``config.training`` says.

    ``model(inputs, targets)`` must return ``(logits, loss)`` (a gptrs ``GPT`` does; any ``nn.Module``
    returning a loss works). ``run_dir`` receives checkpoints, ``metrics.jsonl`` and ``loss.png``; with
    None nothing is written. ``device`` is 'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:1',
    'mps' or a ``torch.device``. Under torchrun the process group is joined here.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        config: Config | None = None,
        device: str | torch.device = "auto",
        *,
        run_dir: str | os.PathLike[str] | None = None,
        log_level: str | None = None,
    ) -> None:
        if log_level is not None or not (logging.getLogger("gptrs").handlers or logging.getLogger().handlers):
            # Nobody configured logging: show progress at INFO, as the CLI does.
            from gptrs.cli import setup_logging

            setup_logging(log_level or "INFO")
        self.config = config if config is not None else Config()
        from gptrs import config as config_mod

        validate = getattr(config_mod, "validate", None)
        if validate is not None:
            validate(self.config, "Trainer config")
        self.dist, self.device = setup_distributed(device)
        if self.device.type == "cpu":
            tune_host_allocator()  # ~10% per CPU step: see host_memory.py
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.precision = resolve_precision(self.config.training.mixed_precision, self.device)
        self.data_stats: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._counters = _Counters()
        self._signal: int | None = None
        self._eval_model: nn.Module = self.model
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (fp32 mode only)
            torch.backends.cudnn.allow_tf32 = True

    # ------------------------------------------------------------------------------------------------ setup

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / ckpt.CHECKPOINTS_DIR if self.run_dir is not None else None

    def _build_optimizer(self) -> torch.optim.Optimizer:
        tc = self.config.training
        groups_fn = getattr(self.model, "optimizer_groups", None)
        if callable(groups_fn):
            groups = groups_fn(tc.weight_decay)
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            groups = [
                {"params": decay, "weight_decay": tc.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
        # Fused AdamW: one kernel for all parameters (CUDA, and CPU since torch 2.4); much faster than the
        # per-parameter loop, and deterministic, so resumes stay bitwise exact.
        fused = self.device.type in ("cuda", "cpu") and all(
            p.dtype in (torch.float32, torch.float16, torch.bfloat16) for g in groups for p in g["params"]
        )
        kwargs: dict[str, Any] = {"lr": tc.learning_rate, "betas": (tc.beta1, tc.beta2)}
        try:
            return torch.optim.AdamW(groups, fused=fused, **kwargs)
        except (RuntimeError, TypeError):  # an older torch without fused kernels for this device
            return torch.optim.AdamW(groups, **kwargs)

    def _wrap_model(self) -> nn.Module:
        model: nn.Module = self.model
        if self.dist.is_distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        if self.config.model.compile:
            model = torch.compile(model)  # type: ignore[assignment]
            if not self.dist.is_distributed:  # evaluation runs unwrapped: reuse the compiled model there
                self._eval_model = model
        return model

    def _build_data(self) -> tuple[Iterable[Any], Iterable[Any]]:
        from gptrs.data import prepare_data

        if self.run_dir is None:
            raise GptrsError(
                "Trainer.train() without data loaders needs a run_dir (for the tokenizer and token cache)"
            )
        bundle = prepare_data(
            self.config,
            self.run_dir,
            self.tokenizer,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
            log=log.info if self.is_main else log.debug,
        )
        self.tokenizer = bundle.tokenizer
        self.data_stats = dict(bundle.stats)
        val = (
            bundle.val.shard(self.dist.rank, self.dist.world_size) if self.dist.is_distributed else bundle.val
        )
        return bundle.train, val

    def _max_steps(self, loader: Iterable[Any]) -> int:
        tc = self.config.training
        if tc.epochs is None:
            return tc.max_steps
        total = getattr(loader, "total_batches", None)  # gptrs EpochBatches: all passes, already counted
        if total is None:
            try:
                total = tc.epochs * len(loader)  # type: ignore[arg-type]
            except TypeError:
                raise GptrsError(
                    "training.epochs needs a training loader with a length (batches per epoch)"
                ) from None
        return max(1, math.ceil(total / tc.gradient_accumulation_steps))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.device == self.device:
            return t
        return t.to(self.device, non_blocking=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------------ state

    def _rank_state(self, stream: _BatchStream) -> dict[str, Any]:
        return {"rng": ckpt.capture_rng_state(), "data": stream.state_dict()}

    def _gather_rank_states(self, stream: _BatchStream) -> list[dict[str, Any]]:
        mine = self._rank_state(stream)
        if not self.dist.is_distributed:
            return [mine]
        everyone: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def _trainer_state(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        schedule: WarmupCosine,
        rank_states: list[dict[str, Any]],
    ) -> dict[str, Any]:
        c = self._counters
        return {
            "version": STATE_VERSION,
            "step": c.step,
            "tokens": c.tokens,
            "best_val_loss": c.best_val_loss,
            "bad_evals": c.bad_evals,
            "interval_loss": c.interval_loss,
            "interval_steps": c.interval_steps,
            "optimizer": optimizer.state_dict(),
            "scheduler": {**schedule.state_dict(), "step": c.step},
            "scaler": scaler.state_dict() if scaler is not None else None,
            "precision": self.precision.name,
            "world_size": self.dist.world_size,
            "ranks": rank_states,
            "history": list(self.history),
        }

    def _save(self, names: list[str], state: dict[str, Any]) -> Path | None:
        """Rank 0 writes checkpoint ``names`` (all holding ``state``); others wait at the barrier."""
        root = self.checkpoint_dir
        path = None
        if root is not None and self.is_main:
            for name in names:
                path = ckpt.save_checkpoint(
                    root,
                    name,
                    step=int(state["step"]),
                    model=self.model,
                    trainer_state=state,
                    config=self.config,
                    tokenizer=self.tokenizer,
                )
                log.debug("saved checkpoint %s", path)
            if any(n.startswith("step_") for n in names):
                for gone in ckpt.prune(root, self.config.training.keep_last):
                    log.debug("removed old checkpoint %s", gone)
        barrier()
        return path

    def _load_checkpoint(
        self, path: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
    ) -> dict[str, Any]:
        """Weights, optimizer and scaler from checkpoint ``path``; returns its trainer state."""
        state = ckpt.load_trainer_state(path)
        if int(state.get("version", 0)) > STATE_VERSION:
            raise CheckpointError(
                f"{path}: trainer state version {state.get('version')} is newer than this gptrs"
            )
        ckpt.load_model_weights(self.model, path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this model: {e}") from None
        return state

    def _resume(
        self,
        resume: bool | str | os.PathLike[str],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        stream: _BatchStream,
    ) -> bool:
        root = self.checkpoint_dir
        if isinstance(resume, (str, os.PathLike)):
            path = Path(resume)
            if not ckpt.is_complete(path):
                raise CheckpointError(f"{path}: not a complete checkpoint (no valid {ckpt.COMPLETE} marker)")
            candidates = [path]
        else:
            if root is None:
                raise GptrsError("resume=True needs a run_dir to find checkpoints in")
            candidates = [c.path for c in reversed(ckpt.list_checkpoints(root))]
            if not candidates:
                log.info("no checkpoint in %s yet; starting from scratch", root)
                return False
        self._check_same_model(candidates[0])
        first_error: CheckpointError | None = None
        for path in candidates:  # newest first; an unreadable one falls back to the next older one
            try:
                state = self._load_checkpoint(path, optimizer, scaler)
                break
            except CheckpointError as e:
                first_error = first_error or e
                log.warning("cannot resume from %s: %s", path, e)
        else:
            assert first_error is not None
            raise first_error
        c = self._counters
        c.step = int(state["step"])
        c.tokens = int(state.get("tokens", 0))
        c.best_val_loss = float(state.get("best_val_loss", math.inf))
        c.bad_evals = int(state.get("bad_evals", 0))
        c.interval_loss = float(state.get("interval_loss", 0.0))
        c.interval_steps = int(state.get("interval_steps", 0))
        self.history = list(state.get("history", []))
        ranks = state.get("ranks", [])
        if len(ranks) == self.dist.world_size:
            mine = ranks[self.dist.rank]
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
                self.dist.world_size,
            )
            self._seed_everything(self.config.training.seed + 1000 * c.step)
        log.info("resumed from %s at step %d", path, c.step)
        return True

    def _check_same_model(self, path: Path) -> None:
        """A checkpoint of another architecture is a user error worth naming precisely."""
        saved = path / ckpt.CONFIG_FILE
        if not saved.is_file():
            return
        from gptrs.config import config_to_dict, load_config

        theirs = config_to_dict(load_config(saved))["model"]
        ours = config_to_dict(self.config)["model"]
        ignored = {"compile", "gradient_checkpointing", "dropout", "attention"}  # same weights either way
        diff = [
            f"model.{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here"
            for k in ours
            if k not in ignored and theirs.get(k) != ours.get(k)
        ]
        if diff:
            raise CheckpointError(f"{path} was trained with another model config ({'; '.join(diff)})")

    def _seed_everything(self, seed: int) -> None:
        seed = seed + self.dist.rank  # each rank its own dropout masks
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    # ------------------------------------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:  # second signal: stop now (checkpoints on disk stay intact)
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping without a checkpoint")
        self._signal = signum
        if self.is_main:
            tqdm.write(
                f"received {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                "(send it again to stop at once)",
                file=sys.stderr,
            )

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
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

    # ------------------------------------------------------------------------------------------------ eval

    @torch.no_grad()
    def evaluate(self, eval_dataloader: Iterable[Any], max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss (token-weighted), perplexity and, when bytes/token is known, bits per byte."""
        model = self._eval_model
        was_training = model.training
        model.eval()
        acc = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        total = torch.zeros((), dtype=acc, device=self.device)
        count = torch.zeros((), dtype=acc, device=self.device)
        try:
            for i, batch in enumerate(eval_dataloader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = _split_batch(batch)
                x, y = self._to_device(x), self._to_device(y)
                with self.precision.autocast():
                    loss = _loss_of(model(x, y))
                n = y.numel()
                total += loss.to(acc) * n
                count += n
        finally:
            model.train(was_training)
        if self.dist.is_distributed:
            both = torch.stack([total, count])
            dist.all_reduce(both, op=dist.ReduceOp.SUM)
            total, count = both[0], both[1]
        if count.item() == 0:
            raise DataError(
                "the evaluation data yielded no batches (it must be re-iterable: a list, a DataLoader, ...)"
            )
        val_loss = float(total / count)
        out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        bpt = self.data_stats.get("val_bytes_per_token")
        if bpt:
            out["val_bpb"] = val_loss / math.log(2) / float(bpt)
        return out

    # ------------------------------------------------------------------------------------------------ train

    def train(
        self,
        train_dataloader: Iterable[Any] | None = None,
        eval_dataloader: Iterable[Any] | None = None,
        *,
        resume: bool | str | os.PathLike[str] = False,
        bytes_per_token: float | None = None,
    ) -> dict[str, Any]:
        """Train and return the final metrics.

        Without loaders, batches come from ``gptrs.data.prepare_data`` on the config (and the run dir's
        token cache). ``resume=True`` continues from the newest complete checkpoint in the run dir (a
        path: from that checkpoint); with none there it starts from scratch. ``bytes_per_token`` (of the
        validation text) turns the validation loss into bits per byte. Raises :class:`TrainingInterrupted`
        after saving a checkpoint when SIGINT/SIGTERM stops the run.
        """
        lock = None
        if self.run_dir is not None and self.is_main:
            lock = RunLock(self.run_dir).acquire()
        try:
            with self._signal_handlers():
                return self._train(train_dataloader, eval_dataloader, resume, bytes_per_token)
        finally:
            if lock is not None:
                lock.release()

    def _train(
        self,
        train_loader: Iterable[Any] | None,
        eval_loader: Iterable[Any] | None,
        resume: bool | str | os.PathLike[str],
        bytes_per_token: float | None,
    ) -> dict[str, Any]:
        tc = self.config.training
        if train_loader is None:
            built_train, built_eval = self._build_data()
            train_loader = built_train
            eval_loader = eval_loader if eval_loader is not None else built_eval
        if bytes_per_token is not None:
            self.data_stats["val_bytes_per_token"] = bytes_per_token
        accum = tc.gradient_accumulation_steps
        max_steps = self._max_steps(train_loader)
        schedule = WarmupCosine(tc.learning_rate, tc.min_lr, min(tc.warmup_steps, max_steps), max_steps)

        if self.checkpoint_dir is not None and self.is_main:
            for action in ckpt.recover(self.checkpoint_dir):
                log.info("checkpoints: %s", action)
        barrier()

        self.model.train()
        optimizer = self._build_optimizer()
        scaler = self.precision.make_scaler()
        stream = _BatchStream(train_loader)
        self._counters = _Counters()
        self.history = []
        resumed = bool(resume) and self._resume(resume, optimizer, scaler, stream)
        if not resumed:
            self._seed_everything(tc.seed)
        c = self._counters
        train_model = self._wrap_model()
        if self.run_dir is not None and self.is_main:
            # The steps after the checkpoint are re-done; drop their records so the log reads as one run.
            truncate_metrics(self.run_dir / METRICS_FILE, c.step)
        metrics = MetricsLogger(self.run_dir, enabled=self.is_main)

        peak = tc.peak_flops or measure_peak_flops(self.device, self.precision.dtype)
        fpt_fn = getattr(self.model, "flops_per_token", None)
        n_params = sum(p.numel() for p in self.model.parameters())
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.is_main:
            log.info(
                "training %s parameters on %s (%s, %d process%s): %d steps of %d sequences "
                "(%d micro-batch%s of %d per process), peak %.2f TFLOP/s%s",
                f"{n_params:,}",
                self.device,
                self.precision.name,
                self.dist.world_size,
                "es" if self.dist.world_size > 1 else "",
                max_steps,
                accum * self.dist.world_size * tc.batch_size,
                accum,
                "es" if accum > 1 else "",
                tc.batch_size,
                peak / 1e12,
                "" if tc.peak_flops else " (measured)",
            )

        bar = tqdm(
            total=max_steps,
            initial=min(c.step, max_steps),
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=True if not self.is_main else None,
            file=sys.stderr,
        )
        stop_reason = "max_steps" if c.step >= max_steps else ""
        last_train: dict[str, Any] = {}
        last_eval: dict[str, Any] = {}
        t_start = time.perf_counter()
        t_log, tokens_at_log, step_at_log = t_start, c.tokens, c.step
        # Summed on the device (no host sync per step on CUDA) on top of what a checkpoint carried over.
        loss_sum = torch.tensor(c.interval_loss, dtype=torch.float32, device=self.device)
        seq_len = None
        try:
            while c.step < max_steps:
                # ---- one optimizer step
                lr = schedule(c.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                try:
                    step_loss = torch.zeros((), device=self.device)
                    for micro in range(accum):
                        x, y = _split_batch(stream.next())
                        x, y = self._to_device(x), self._to_device(y)
                        seq_len = x.shape[-1]
                        sync = micro == accum - 1 or not self.dist.is_distributed
                        ctx = contextlib.nullcontext() if sync else train_model.no_sync()  # type: ignore[operator]
                        with ctx:
                            with self.precision.autocast():
                                loss = _loss_of(train_model(x, y))
                            scaled = loss / accum
                            if scaler is not None:
                                scaler.scale(scaled).backward()
                            else:
                                scaled.backward()
                        step_loss += loss.detach()
                        c.tokens += x.numel() * self.dist.world_size
                except StopIteration:
                    if stream.exhausted and c.step == 0 and stream.epoch == 0:
                        raise DataError("the training data yielded no batches") from None
                    optimizer.zero_grad(set_to_none=True)
                    stop_reason = "data_exhausted"
                    log.info("training data exhausted at step %d", c.step)
                    break
                if scaler is not None:
                    scaler.unscale_(optimizer)
                log_now = (c.step + 1) % tc.log_interval == 0 or c.step + 1 == max_steps
                grad_norm: torch.Tensor | None = None
                if tc.max_grad_norm > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
                elif log_now:
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                c.step += 1
                loss_sum += step_loss / accum
                c.interval_steps += 1
                bar.update(1)

                # ---- log
                if log_now:
                    mean_loss = float(all_reduce_mean(loss_sum / c.interval_steps).item())
                    if not math.isfinite(mean_loss):
                        raise GptrsError(
                            f"the training loss became {mean_loss} at step {c.step}; lower training.learning_rate "
                            "or use mixed_precision bf16/false"
                        )
                    now = time.perf_counter()
                    dt = max(now - t_log, 1e-9)
                    steps = c.step - step_at_log
                    tok_s = (c.tokens - tokens_at_log) / dt
                    fpt = fpt_fn(seq_len) if callable(fpt_fn) else 6 * n_params
                    gn = float(grad_norm) if grad_norm is not None else None
                    last_train = {
                        "kind": "train",
                        "step": c.step,
                        "loss": mean_loss,
                        "ppl": math.exp(min(mean_loss, 50.0)),
                        "lr": lr,
                        "grad_norm": gn,
                        "tokens_per_sec": tok_s,
                        "mfu": fpt * tok_s / self.dist.world_size / peak,
                        "step_time_ms": 1000 * dt / max(steps, 1),
                        "memory_mb": memory_bytes(self.device) / 2**20,
                        "tokens": c.tokens,
                        "elapsed_s": now - t_start,
                    }
                    self.history.append(last_train)
                    metrics.log(last_train)
                    bar.set_postfix(
                        loss=f"{mean_loss:.4f}",
                        lr=f"{lr:.2e}",
                        tok_s=f"{tok_s:,.0f}",
                        mfu=f"{last_train['mfu']:.1%}",
                        refresh=False,
                    )
                    log.info(
                        "step %d | loss %.4f | lr %.2e | grad norm %s | %.0f tok/s | MFU %.1f%% | %.0f ms/step | %.0f MB",
                        c.step,
                        mean_loss,
                        lr,
                        f"{gn:.3f}" if gn is not None else "-",
                        tok_s,
                        100 * last_train["mfu"],
                        last_train["step_time_ms"],
                        last_train["memory_mb"],
                    )
                    t_log, tokens_at_log, step_at_log = now, c.tokens, c.step
                    loss_sum.zero_()
                    c.interval_steps = 0

                # ---- evaluate, early stopping
                improved = False
                if eval_loader is not None and (c.step % tc.eval_interval == 0 or c.step == max_steps):
                    last_eval = self._eval_and_record(eval_loader, metrics)
                    improved = last_eval["val_loss"] < c.best_val_loss
                    if improved:
                        c.best_val_loss = last_eval["val_loss"]
                        c.bad_evals = 0
                    else:
                        c.bad_evals += 1
                    patience = tc.early_stopping_patience
                    if patience is not None and c.bad_evals >= patience:
                        stop_reason = "early_stopping"
                        log.info(
                            "early stopping at step %d: no improvement in %d evaluations (best %.4f)",
                            c.step,
                            c.bad_evals,
                            c.best_val_loss,
                        )

                # ---- checkpoints
                interrupted = any_rank(self._signal is not None, self.device)
                final = c.step >= max_steps or bool(stop_reason) or interrupted
                names = []
                if improved:
                    names.append("best")
                if final:
                    names.append("last")
                elif c.step % tc.save_interval == 0:
                    names.append(ckpt.step_name(c.step) if tc.keep_last > 0 else "last")
                if names and self.run_dir is not None:
                    c.interval_loss = float(loss_sum.item())
                    state = self._trainer_state(optimizer, scaler, schedule, self._gather_rank_states(stream))
                    saved = self._save(names, state)
                    if interrupted:
                        signum = self._signal or signal.SIGTERM
                        bar.close()
                        metrics.close()
                        raise TrainingInterrupted(signum, c.step, saved)
                elif interrupted:
                    raise TrainingInterrupted(self._signal or signal.SIGTERM, c.step, None)
                if final:
                    stop_reason = stop_reason or "max_steps"
                    break
        finally:
            bar.close()

        if stop_reason == "data_exhausted" and c.step > 0:
            if eval_loader is not None:
                last_eval = self._eval_and_record(eval_loader, metrics)
                if last_eval["val_loss"] < c.best_val_loss:
                    c.best_val_loss = last_eval["val_loss"]
            if self.run_dir is not None:
                c.interval_loss = float(loss_sum.item())
                self._save(
                    ["last"],
                    self._trainer_state(optimizer, scaler, schedule, self._gather_rank_states(stream)),
                )
        if not last_eval and eval_loader is not None:  # e.g. resumed a finished run: report where it stands
            last_eval = self._eval_and_record(eval_loader, metrics, record=False)
        metrics.close()
        if self.run_dir is not None and self.is_main:
            plot_loss_curves(self.history, self.run_dir / LOSS_PLOT_FILE)
        result: dict[str, Any] = {
            "step": c.step,
            "tokens": c.tokens,
            "stop_reason": stop_reason,
            "train_loss": last_train.get("loss", self._last_logged("loss")),
            "best_val_loss": c.best_val_loss if math.isfinite(c.best_val_loss) else None,
            "elapsed_s": time.perf_counter() - t_start,
            "resumed": resumed,
        }
        result.update(last_eval)
        result.pop("kind", None)
        return result

    def _last_logged(self, key: str) -> Any:
        for r in reversed(self.history):
            if key in r:
                return r[key]
        return None

    def _eval_and_record(
        self, eval_loader: Iterable[Any], metrics: MetricsLogger, *, record: bool = True
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        out: dict[str, Any] = self.evaluate(eval_loader, self.config.training.eval_batches)
        out = {"kind": "eval", "step": self._counters.step, **out, "eval_time_s": time.perf_counter() - t0}
        if record:
            self.history.append(out)
            metrics.log(out)
        if self.is_main:
            bpb = f" | {out['val_bpb']:.3f} bits/byte" if "val_bpb" in out else ""
            log.info(
                "step %d | val loss %.4f | ppl %.2f%s",
                out["step"],
                out["val_loss"],
                out["val_ppl"],
                bpb,
            )
        return out


__all__ = ["Trainer", "TrainingInterrupted", "current_dist_info"]
