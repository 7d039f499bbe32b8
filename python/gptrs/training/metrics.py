"""Training metrics: memory in use, the training log record (MFU against the peak of ``peak_flops.py``),
and the sinks metrics go to.

A training log record (:class:`TrainLog`) holds the loss, learning rate, gradient norm, tokens/s, MFU, time
per step and memory; it goes to the console, the progress bar and the sinks: ``metrics.jsonl`` in the run
directory (one JSON object per line, the structured log), TensorBoard event files when ``tensorboard`` is
installed, and at the end a PNG of the train and validation loss curves when ``matplotlib`` is installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gptrs.files import METRICS_FILE, atomic_path
from gptrs.training.peak_flops import PeakFlops, measure_peak_flops  # noqa: F401 (importable from here too)

log = logging.getLogger("gptrs.train")

LOSS_PLOT_FILE = "loss.png"


def memory_bytes(device: torch.device | str) -> int:
    """Peak allocated memory on CUDA, allocated on MPS, else the process's resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.current_allocated_memory())
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _percent(mfu: float | None) -> str:
    return "-" if mfu is None else f"{mfu:.1%}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


class MetricsLogger:
    """Appends records to ``<run_dir>/metrics.jsonl`` and mirrors numeric fields to TensorBoard.

    A record is a flat dict with at least ``step`` and ``kind`` ('train', 'eval', ...). Disabled (all
    methods no-ops) when ``run_dir`` is None or on non-zero ranks.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None, *, enabled: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / METRICS_FILE if run_dir is not None else None
        self._file = None
        self._tb: Any = None
        if not self.enabled or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard is not installed; metrics go to %s only", self.path)
        else:
            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def log(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["step"])
            kind = record.get("kind", "train")
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class RunLog:
    """Where a run's records go: ``history`` (the list saved with checkpoints), the sinks of
    :class:`MetricsLogger`, the console and, for training records, the progress bar.

    Training records measure throughput and MFU over the steps since the previous one
    (``flops_per_token(seq_len)`` FLOPs per token against ``peak_flops`` per process). Only the main
    process (``main``) writes files, shows the bar and logs evaluations.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None,
        history: list[dict[str, Any]],
        *,
        main: bool,
        device: torch.device,
        world_size: int,
        peak_flops: PeakFlops | float,
        flops_per_token: Callable[[int | None], float],
        max_steps: int,
        step: int,
        tokens: int,
    ) -> None:
        self.history = history
        self.main = main
        self.device = device
        self.world_size = world_size
        self.peak = (
            peak_flops if isinstance(peak_flops, PeakFlops) else PeakFlops(float(peak_flops), "config")
        )
        self.flops_per_token = flops_per_token
        self.sink = MetricsLogger(run_dir, enabled=main)
        self.bar = tqdm(
            total=max_steps,
            initial=min(step, max_steps),
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=True if not main else None,  # None: tqdm hides it when stderr is not a terminal
            file=sys.stderr,
        )
        self.started = time.perf_counter()
        self._time, self._step, self._tokens = self.started, step, tokens

    def train(
        self, *, step: int, tokens: int, loss: float, lr: float, grad_norm: float | None, seq_len: int | None
    ) -> dict[str, Any]:
        """Record the training metrics at ``step`` (``tokens`` seen so far); returns the record."""
        now = time.perf_counter()
        dt = max(now - self._time, 1e-9)
        tok_s = (tokens - self._tokens) / dt
        record: dict[str, Any] = {
            "kind": "train",
            "step": step,
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_sec": tok_s,
            "mfu": self.peak.mfu(self.flops_per_token(seq_len) * tok_s / self.world_size, step=step),
            "step_time_ms": 1000 * dt / max(step - self._step, 1),
            "memory_mb": memory_bytes(self.device) / 2**20,
            "tokens": tokens,
            "elapsed_s": now - self.started,
        }
        self.history.append(record)
        self.sink.log(record)
        self.bar.set_postfix(
            loss=f"{loss:.4f}",
            lr=f"{lr:.2e}",
            tok_s=f"{tok_s:,.0f}",
            mfu=_percent(record["mfu"]),
            refresh=False,
        )
        log.info(
            "step %d | loss %.4f | lr %.2e | grad norm %s | %.0f tok/s | MFU %s | %.0f ms/step | %.0f MB",
            step,
            loss,
            lr,
            f"{grad_norm:.3f}" if grad_norm is not None else "-",
            tok_s,
            _percent(record["mfu"]),
            record["step_time_ms"],
            record["memory_mb"],
        )
        # From now, not ``now``: a re-measured peak (above) is not training time.
        self._time, self._step, self._tokens = time.perf_counter(), step, tokens
        return record

    def exclude_time(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, a checkpoint write) out of the next record's throughput."""
        self._time += seconds

    def eval(self, record: dict[str, Any], *, keep: bool = True) -> None:
        """Show an evaluation record; with ``keep``, add it to the history and the sinks too."""
        if keep:
            self.history.append(record)
            self.sink.log(record)
        if self.main:
            bpb = f" | {record['val_bpb']:.3f} bits/byte" if "val_bpb" in record else ""
            log.info(
                "step %d | val loss %.4f | ppl %.2f%s",
                record["step"],
                record["val_loss"],
                record["val_ppl"],
                bpb,
            )

    def close(self) -> None:
        self.bar.close()
        self.sink.close()


def given_batch_size(loader: Iterable[Any], configured: int) -> int:
    """The sequences per micro-batch a training loader yields, where it says so without being drawn from (a
    torch DataLoader's or a gptrs sampler's ``batch_size``, a list's first batch); else ``configured``."""
    size = getattr(loader, "batch_size", None)
    if isinstance(size, int) and size > 0:
        return size
    if isinstance(loader, (list, tuple)) and loader:
        first = loader[0]
        x = first[0] if isinstance(first, (list, tuple)) else first
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) >= 1:
            return int(shape[0])
    return configured


def log_run_start(
    *,
    parameters: int,
    device: torch.device,
    precision: str,
    world_size: int,
    max_steps: int,
    accum: int,
    batch_size: int,
    peak: PeakFlops,
) -> None:
    """The line that opens a run's log: what trains where, and how big a step is."""
    log.info(
        "training %s parameters on %s (%s, %d process%s): %d steps of %d sequences "
        "(%d micro-batch%s of %d per process), %s",
        f"{parameters:,}",
        device,
        precision,
        world_size,
        "es" if world_size > 1 else "",
        max_steps,
        accum * world_size * batch_size,
        accum,
        "es" if accum > 1 else "",
        batch_size,
        peak.describe(),
    )


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file; a torn last line (a crash mid-write) is skipped."""
    records: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: str | os.PathLike[str], max_step: int) -> None:
    """Keep only records up to ``max_step``: a resumed run re-does (and re-logs) the steps after its
    checkpoint, so the log reads as if the run had never stopped. Rewritten atomically."""
    p = Path(path)
    if not p.exists():
        return
    kept = [r for r in read_metrics(p) if int(r.get("step", 0)) <= max_step]
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")


def plot_loss_curves(history: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Write a PNG of train and validation loss against step. Returns False (and logs one line) when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed; skipping the loss plot (pip install matplotlib)")
        return False
    history = list(history)
    train = [
        (r["step"], r["loss"]) for r in history if r.get("kind") == "train" and r.get("loss") is not None
    ]
    val = [
        (r["step"], r["val_loss"])
        for r in history
        if r.get("kind") == "eval" and r.get("val_loss") is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("gptrs training loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote the loss curves to %s", path)
    return True
