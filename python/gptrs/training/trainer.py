"""The training loop: ``Trainer(model, tokenizer, config).train(train_batches, eval_batches)``.

One optimizer step = ``gradient_accumulation_steps`` micro-batches (loss / k each; under DDP gradients
are synchronised on the last micro-step only), then clipping, then AdamW (fused where the device has
it) at the rate of the warmup + cosine schedule. Every ``log_interval`` steps the metrics go to the
progress bar, the log, ``metrics.jsonl`` and TensorBoard; every ``eval_interval`` steps the validation
set is scored (loss, perplexity, bits per byte) and early stopping is decided; checkpoints are written
every ``save_interval`` steps, on a new best validation loss, at the end, and when SIGINT/SIGTERM asks
the run to stop (the current step is finished first). An ``on_step`` callback sees every step (the race in
``benches/bench_recipe.py`` records its curves so) and ``time_budget_s`` ends a run at equal training time.

Resuming restores weights, optimizer, scaler, step, every RNG and the batch sampler, so on CPU a
resumed run's losses and final weights are bitwise those of a run that never stopped.

The pieces live beside this file: ``state.py`` (counters, ``trainer_state.pt``, resuming), ``checkpoint.py``
(checkpoint files), ``losses.py`` (batches, losses, the validation pass), ``optim.py`` (AdamW),
``metrics.py`` (log records and where they go), ``signals.py`` (SIGINT/SIGTERM), ``distributed.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptrs import faults
from gptrs.config import Config
from gptrs.errors import DataError, GptrsError
from gptrs.files import METRICS_FILE
from gptrs.host_memory import tune_host_allocator
from gptrs.training import checkpoint as ckpt
from gptrs.training import state
from gptrs.training.batch_schedule import batch_rows_at
from gptrs.training.compile import Pause, compile_model, should_compile
from gptrs.training.distributed import all_reduce_mean, any_rank, barrier, joined_dist_info, resolve_device
from gptrs.training.losses import evaluate, loss_of, split_batch, to_device
from gptrs.training.lr_schedule import WarmupCosine, total_steps
from gptrs.training.metrics import (
    LOSS_PLOT_FILE,
    RunLog,
    given_batch_size,
    log_run_start,
    plot_loss_curves,
    truncate_metrics,
)
from gptrs.training.optim import apply_lr, build_optimizer
from gptrs.training.peak_flops import PeakFlops
from gptrs.training.precision import resolve_precision
from gptrs.training.run_lock import RunLock
from gptrs.training.signals import StopRequest, TrainingInterrupted

log = logging.getLogger("gptrs.train")


@dataclass
class _Run:
    """What one call of ``train()`` works with (the Trainer holds what outlives it)."""

    max_steps: int
    model: nn.Module  # what runs the steps: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedule: WarmupCosine
    stream: state.BatchStream
    eval_loader: Iterable[Any] | None
    metrics: RunLog  # history, metrics.jsonl, TensorBoard, console, progress bar
    loss_sum: torch.Tensor  # training losses since the last log line, summed on the device (no host sync)
    stop: StopRequest
    resumed: bool
    start_step: int = 0  # where this call of train() began (a resumed run: the checkpoint's step)
    start_tokens: int = 0
    on_step: Callable[[dict[str, Any]], Any] | None = None
    time_budget_s: float | None = None
    train_s: float = 0.0  # this call's training time: the steps and log lines, not evaluations or saves
    stop_reason: str = ""
    last_train: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    seq_len: int | None = None


class Trainer:
    """Train ``model`` on ``(inputs, targets)`` batches as ``config.training`` says.

    ``model(inputs, targets)`` must return ``(logits, loss)`` (a gptrs ``GPT`` does; any ``nn.Module``
    returning a loss works). ``run_dir`` receives checkpoints, ``metrics.jsonl`` and ``loss.png``; with
    None nothing is written. ``device`` is 'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:1',
    'mps' or a ``torch.device``. Under torchrun, join the process group first
    (``gptrs.training.distributed.setup_distributed``); without one the Trainer is rank 0 of 1.
    ``train()`` locks ``run_dir`` (``run_lock.py``) unless the caller already holds ``run_lock`` on it, as
    the CLI does from before it writes the run's config and token cache.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        config: Config | None = None,
        device: str | torch.device = "auto",
        *,
        run_dir: str | os.PathLike[str] | None = None,
        run_lock: RunLock | None = None,
        log_level: str | None = None,
    ) -> None:
        if log_level is not None or not (logging.getLogger("gptrs").handlers or logging.getLogger().handlers):
            # Nobody configured logging: show progress at INFO, as the CLI does.
            from gptrs.cli import setup_logging

            setup_logging(log_level or "INFO")
        self.config = config if config is not None else Config()
        self.dist = joined_dist_info()  # the CLI (or the user) joined the process group, if any
        self.device = resolve_device(device, self.dist.local_rank)
        if self.device.type == "cpu":
            tune_host_allocator()  # ~10% per CPU step: see host_memory.py
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_lock = run_lock
        self.precision = resolve_precision(self.config.training.mixed_precision, self.device)
        self.data_stats: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._counters = state.Counters()
        self._eval_model: nn.Module = self.model
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (fp32 mode only)
            torch.backends.cudnn.allow_tf32 = True

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / ckpt.CHECKPOINTS_DIR if self.run_dir is not None else None

    # ------------------------------------------------------------------------------------------------ train

    def train(
        self,
        train_dataloader: Iterable[Any],
        eval_dataloader: Iterable[Any] | None = None,
        *,
        resume: bool | str | os.PathLike[str] = False,
        bytes_per_token: float | None = None,
        on_step: Callable[[dict[str, Any]], Any] | None = None,
        time_budget_s: float | None = None,
    ) -> dict[str, Any]:
        """Train and return the final metrics.

        Batches come from ``train_dataloader`` (``gptrs.data.prepare_data`` builds them from a config).
        ``resume=True`` continues from the newest complete checkpoint in the run dir (a path: from that
        checkpoint); with none there it starts from scratch. ``bytes_per_token`` (of the validation text)
        turns the validation loss into bits per byte. ``on_step(info)`` is called after every optimizer
        step with ``step``, ``train_s`` (training seconds so far in this call: steps and log lines, not
        evaluations, checkpoints or the callback itself), ``train`` and ``eval`` (the records logged at
        this step, or None). ``time_budget_s`` ends the run (evaluated and saved as at ``max_steps``) once
        ``train_s`` reaches it, so runs can be compared at equal training time. Raises
        :class:`TrainingInterrupted` after saving a checkpoint when SIGINT/SIGTERM stops the run.
        """
        lock = None
        if self.run_dir is not None and self.is_main and self.run_lock is None:
            lock = RunLock(self.run_dir).acquire()
        stop = StopRequest(announce=self.is_main)
        try:
            with stop.handling():
                run = self._start(train_dataloader, eval_dataloader, resume, bytes_per_token, stop)
                run.on_step, run.time_budget_s = on_step, time_budget_s
                return self._train(run)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, run: _Run) -> dict[str, Any]:
        """The loop: step, log, maybe evaluate, maybe checkpoint, until max_steps or a reason to stop."""
        c, tc = self._counters, self.config.training
        faults.point("train")
        try:
            while c.step < run.max_steps:
                t0 = time.perf_counter()
                lr = run.schedule(c.step)
                log_now = (c.step + 1) % tc.log_interval == 0 or c.step + 1 == run.max_steps
                try:
                    grad_norm = self._step(run, lr, need_norm=log_now)
                except StopIteration:
                    self._data_exhausted(run)
                    break
                if log_now:
                    self._log(run, lr, grad_norm)
                run.train_s += time.perf_counter() - t0
                budget = run.time_budget_s  # under DDP every rank stops at the same step
                if budget is not None and any_rank(run.train_s >= budget, self.device):
                    run.stop_reason = "time_budget"
                    log.info("time budget of %.0f s reached at step %d", budget, c.step)
                improved = False
                eval_due = c.step % tc.eval_interval == 0 or c.step == run.max_steps or bool(run.stop_reason)
                with Pause() as pause:  # not a training step: left out of the next log line's throughput
                    evaluated = run.eval_loader is not None and eval_due
                    if evaluated:
                        improved = self._evaluate_and_track(run)
                    final = self._checkpoint(run, improved)
                    if run.on_step is not None:
                        run.on_step(
                            {
                                "step": c.step,
                                "train_s": run.train_s,
                                "train": run.last_train if log_now else None,
                                "eval": run.last_eval if evaluated else None,
                            }
                        )
                run.metrics.exclude_time(pause.seconds)
                if final:
                    break
        finally:
            run.metrics.bar.close()
        return self._finish(run)

    def _step(self, run: _Run, lr: float, *, need_norm: bool) -> torch.Tensor | None:
        """One optimizer step at learning rate ``lr``: the micro-batches (forward under autocast, backward of
        loss / k; under DDP gradients sync on the last one only), clipping, AdamW. Adds the step's loss to
        ``run.loss_sum``; returns the gradient norm (None if neither clipping nor ``need_norm`` wants it).
        Raises StopIteration when the training data runs out."""
        c, tc = self._counters, self.config.training
        accum = tc.gradient_accumulation_steps
        apply_lr(run.optimizer, lr)  # every group at lr times its lr_scale (Muon's, the embeddings')
        step_loss = torch.zeros((), device=self.device)
        rows = batch_rows_at(c.step, tc.batch_size_schedule, run.max_steps)
        for micro in range(accum):
            faults.point("step", step=c.step)
            x, y = split_batch(run.stream.next())
            if rows is not None:  # training.batch_size_schedule: this stage's first rows
                x, y = x[:rows], y[:rows]
            x, y = to_device(x, self.device), to_device(y, self.device)
            run.seq_len = x.shape[-1]
            sync = micro == accum - 1 or not self.dist.is_distributed
            with contextlib.nullcontext() if sync else run.model.no_sync():  # type: ignore[operator]
                with self.precision.autocast():
                    loss = loss_of(run.model(x, y))
                scaled = loss / accum
                if run.scaler is not None:
                    run.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            step_loss += loss.detach()
            c.tokens += x.numel() * self.dist.world_size
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        grad_norm: torch.Tensor | None = None
        if tc.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        elif need_norm:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        c.step += 1
        run.loss_sum += step_loss / accum
        c.interval_steps += 1
        run.metrics.bar.update(1)
        return grad_norm

    def step_fn(self, train_dataloader: Iterable[Any]) -> Callable[[], None]:
        """A function that takes one optimizer step per call exactly as ``train()`` does (schedule,
        autocast, micro-batches, clipping, the optimizer; no logging, evaluation or checkpoints), for
        benchmarks that time our steps one by one, interleaved with a peer's."""
        run = self._start(train_dataloader, None, False, None, StopRequest(announce=False))

        def step() -> None:
            self._step(run, run.schedule(self._counters.step), need_norm=False)

        return step

    def _data_exhausted(self, run: _Run) -> None:
        c = self._counters
        if run.stream.exhausted and c.step == 0 and run.stream.epoch == 0:
            raise DataError("the training data yielded no batches") from None
        run.optimizer.zero_grad(set_to_none=True)
        run.stop_reason = "data_exhausted"
        log.info("training data exhausted at step %d", c.step)

    def _log(self, run: _Run, lr: float, grad_norm: torch.Tensor | None) -> None:
        """The mean loss since the last log line (over all ranks) and the throughput, to every sink."""
        c = self._counters
        mean_loss = float(all_reduce_mean(run.loss_sum / c.interval_steps).item())
        if not math.isfinite(mean_loss):
            raise GptrsError(
                f"the training loss became {mean_loss} at step {c.step}; lower training.learning_rate "
                "or use mixed_precision bf16/false"
            )
        gn = float(grad_norm) if grad_norm is not None else None
        run.last_train = run.metrics.train(
            step=c.step, tokens=c.tokens, loss=mean_loss, lr=lr, grad_norm=gn, seq_len=run.seq_len
        )
        run.loss_sum.zero_()
        c.interval_steps = 0

    def _evaluate_and_track(self, run: _Run) -> bool:
        """Score the validation set; True on a new best loss. Decides early stopping."""
        assert run.eval_loader is not None
        c, patience = self._counters, self.config.training.early_stopping_patience
        run.last_eval = self._eval_and_record(run)
        improved = run.last_eval["val_loss"] < c.best_val_loss
        if improved:
            c.best_val_loss = run.last_eval["val_loss"]
            c.bad_evals = 0
        else:
            c.bad_evals += 1
        if patience is not None and c.bad_evals >= patience:
            run.stop_reason = "early_stopping"
            log.info(
                "early stopping at step %d: no improvement in %d evaluations (best %.4f)",
                c.step,
                c.bad_evals,
                c.best_val_loss,
            )
        faults.point("train")
        return improved

    def _checkpoint(self, run: _Run, improved: bool) -> bool:
        """Save the checkpoints due after this step; True when the run ends here. A signal (on any rank)
        ends it with :class:`TrainingInterrupted` once its checkpoint is saved."""
        c, tc = self._counters, self.config.training
        interrupted = any_rank(run.stop.signum is not None, self.device)
        final = c.step >= run.max_steps or bool(run.stop_reason) or interrupted
        names = ["best"] if improved else []
        if final:
            names.append("last")
        elif c.step % tc.save_interval == 0:
            names.append(ckpt.step_name(c.step) if tc.keep_last > 0 else "last")
        saved = self._save(run, names) if names and self.run_dir is not None else None
        if interrupted:
            run.metrics.close()
            raise TrainingInterrupted(run.stop.signum or signal.SIGTERM, c.step, saved)
        if final:
            run.stop_reason = run.stop_reason or "max_steps"
        return final

    def _save(self, run: _Run, names: list[str]) -> Path | None:
        """Rank 0 writes checkpoints ``names`` (the same state in each) and prunes old periodic ones; the
        other ranks contribute their RNG and sampler states, then wait at the barrier."""
        c, root = self._counters, self.checkpoint_dir
        c.interval_loss = float(run.loss_sum.item())
        snapshot = state.trainer_state(
            c,
            self.history,
            optimizer=run.optimizer,
            scaler=run.scaler,
            schedule=run.schedule,
            precision=self.precision.name,
            ranks=state.gather_rank_states(run.stream, self.dist),
        )
        path = None
        if root is not None and self.is_main:
            for name in names:
                path = ckpt.save_checkpoint(
                    root,
                    name,
                    step=c.step,
                    model=self.model,
                    trainer_state=snapshot,
                    config=self.config,
                    tokenizer=self.tokenizer,
                )
                log.info("saved checkpoint %s (step %d)", path, c.step)
            if any(n.startswith("step_") for n in names):
                for gone in ckpt.prune(root, self.config.training.keep_last):
                    log.debug("removed old checkpoint %s", gone)
        barrier()
        faults.point("train")
        return path

    # ------------------------------------------------------------------------------------ before and after

    def _start(
        self,
        train_loader: Iterable[Any],
        eval_loader: Iterable[Any] | None,
        resume_from: bool | str | os.PathLike[str],
        bytes_per_token: float | None,
        stop: StopRequest,
    ) -> _Run:
        """Data, schedule, optimizer, the resumed (or freshly seeded) state, sinks: all the loop needs."""
        tc = self.config.training
        if bytes_per_token is not None:
            self.data_stats["val_bytes_per_token"] = bytes_per_token
        max_steps = total_steps(tc, train_loader)
        warmdown = None if tc.warmdown_ratio is None else max(1, round(tc.warmdown_ratio * max_steps))
        schedule = WarmupCosine(
            tc.learning_rate, tc.min_lr, min(tc.warmup_steps, max_steps), max_steps, warmdown
        )
        if self.checkpoint_dir is not None and self.is_main:
            for action in ckpt.recover(self.checkpoint_dir):
                log.info("checkpoints: %s", action)
        barrier()

        self.model.train()
        optimizer = build_optimizer(self.model, tc, self.device)
        scaler = self.precision.make_scaler()
        stream = state.BatchStream(train_loader)
        restored = None
        if resume_from:
            restored = state.restore(
                resume_from,
                self.checkpoint_dir,
                model=self.model,
                config=self.config,
                optimizer=optimizer,
                scaler=scaler,
                stream=stream,
                info=self.dist,
            )
        if restored is None:
            state.seed_everything(tc.seed, self.dist.rank)
        elif restored.skipped:
            # Set aside what could not be loaded, so that this run's saves and pruning never replace it.
            if self.is_main:
                for path in restored.skipped:
                    log.warning("kept the damaged %s as %s", path.name, ckpt.set_aside(path))
            barrier()
        self._counters, self.history = (
            (restored.counters, restored.history) if restored else (state.Counters(), [])
        )
        c = self._counters
        train_model = self._wrap_model()
        if self.run_dir is not None and self.is_main:
            # The steps after the checkpoint are re-done; drop their records so the log reads as one run.
            truncate_metrics(self.run_dir / METRICS_FILE, c.step)
        return _Run(
            max_steps=max_steps,
            model=train_model,
            optimizer=optimizer,
            scaler=scaler,
            schedule=schedule,
            stream=stream,
            eval_loader=eval_loader,
            metrics=self._run_log(max_steps, train_loader),
            loss_sum=torch.tensor(c.interval_loss, dtype=torch.float32, device=self.device),
            stop=stop,
            resumed=restored is not None,
            start_step=c.step,
            start_tokens=c.tokens,
            stop_reason="max_steps" if c.step >= max_steps else "",
        )

    def _run_log(self, max_steps: int, train_loader: Iterable[Any]) -> RunLog:
        """Announce the run; its log measures throughput against the device's peak FLOP/s (``training.peak_flops``,
        else a known GPU's, else measured: ``peak_flops.py``)."""
        tc, c = self.config.training, self._counters
        peak = PeakFlops.for_device(self.device, self.precision.dtype, tc.peak_flops)
        n_params = sum(p.numel() for p in self.model.parameters())
        if self.is_main:
            log_run_start(
                parameters=n_params,
                device=self.device,
                precision=self.precision.name,
                world_size=self.dist.world_size,
                max_steps=max_steps,
                accum=tc.gradient_accumulation_steps,
                batch_size=given_batch_size(train_loader, tc.batch_size),
                peak=peak,
            )
        fpt_fn = getattr(self.model, "flops_per_token", None)
        return RunLog(
            self.run_dir,
            self.history,
            main=self.is_main,
            max_steps=max_steps,
            device=self.device,
            world_size=self.dist.world_size,
            peak_flops=peak,
            flops_per_token=fpt_fn if callable(fpt_fn) else lambda _: 6 * n_params,
            step=c.step,
            tokens=c.tokens,
        )

    def _finish(self, run: _Run) -> dict[str, Any]:
        """After the loop: a run whose data ran out is evaluated and saved; then the loss plot and result."""
        c = self._counters
        if run.stop_reason == "data_exhausted" and c.step > 0:
            if run.eval_loader is not None:
                run.last_eval = self._eval_and_record(run)
                if run.last_eval["val_loss"] < c.best_val_loss:
                    c.best_val_loss = run.last_eval["val_loss"]
            if self.run_dir is not None:
                self._save(run, ["last"])
        if not run.last_eval and run.eval_loader is not None:  # e.g. resumed a finished run: where it stands
            run.last_eval = self._eval_and_record(run, keep=False)
        run.metrics.close()
        if self.run_dir is not None and self.is_main:
            plot_loss_curves(self.history, self.run_dir / LOSS_PLOT_FILE)
        result: dict[str, Any] = {
            "step": c.step,
            "tokens": c.tokens,
            "stop_reason": run.stop_reason,
            "train_loss": run.last_train.get("loss", self._last_logged("loss")),
            "best_val_loss": c.best_val_loss if math.isfinite(c.best_val_loss) else None,
            "elapsed_s": time.perf_counter() - run.metrics.started,
            "train_s": run.train_s,
            "resumed": run.resumed,
            "start_step": run.start_step,  # what this call trained: step - start_step
            "start_tokens": run.start_tokens,
            "max_steps": run.max_steps,
        }
        result.update(run.last_eval)
        result.pop("kind", None)
        return result

    def _last_logged(self, key: str) -> Any:
        for r in reversed(self.history):
            if key in r:
                return r[key]
        return None

    # ------------------------------------------------------------------------------------------------ setup

    def _wrap_model(self) -> nn.Module:
        model: nn.Module = self.model
        if self.dist.is_distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        if should_compile(self.config.model.compile, self.device):
            model = compile_model(model, log)
            if not self.dist.is_distributed:  # evaluation runs unwrapped: reuse the compiled model there
                self._eval_model = model
        return model

    # ------------------------------------------------------------------------------------------------ eval

    def evaluate(self, eval_dataloader: Iterable[Any], max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss (token-weighted), perplexity and, when bytes/token is known, bits per byte."""
        faults.point("eval")
        return evaluate(
            self._eval_model,
            eval_dataloader,
            device=self.device,
            precision=self.precision,
            max_batches=max_batches,
            bytes_per_token=self.data_stats.get("val_bytes_per_token"),
        )

    def _eval_and_record(self, run: _Run, *, keep: bool = True) -> dict[str, Any]:
        assert run.eval_loader is not None
        t0 = time.perf_counter()
        out: dict[str, Any] = self.evaluate(run.eval_loader, self.config.training.eval_batches)
        out = {"kind": "eval", "step": self._counters.step, **out, "eval_time_s": time.perf_counter() - t0}
        run.metrics.eval(out, keep=keep)
        return out


__all__ = ["Trainer", "TrainingInterrupted"]
