"""The peak FLOP/s that MFU (model FLOPs utilisation) is measured against, and the rule that keeps MFU honest.

Where the peak comes from, first that applies:

1. ``training.peak_flops`` in the config (``source='config'``);
2. on CUDA, the vendor's dense (no sparsity) tensor-core figure for the GPU, looked up by its device name in
   :data:`GPU_PEAKS` (``source='table'``);
3. otherwise a measured one (``source='measured'``): the best of several timings of a square matmul in the
   training dtype, at a size where one matmul takes ~20 ms (large enough to reach the peak of a CPU's BLAS).

A measured peak is only as good as the moment it was measured: on a machine that was busy at start-up it comes
out low, and every MFU after is inflated (a run once printed "MFU 123%"; another, 70-90% at 114-150 ms/step
once the machine went quiet, where the same run beside other work printed 40% at 250 ms/step). So a measured
peak is the best one seen, timed again when the machine looks quieter than when it was last timed: when a log
interval's throughput is more than :data:`RETIME_GAIN` times the throughput at the last timing (the model runs
faster, so the matmul would too), within ``max_remeasures`` timings per run. And :meth:`PeakFlops.mfu` never
returns a figure above 1: when a log interval's throughput beats the peak, a measured peak is measured again
(best of the old and new), and if the throughput still beats it the peak is raised to that throughput and that
record has no MFU; a table or config peak is never changed, the record has no MFU. Either way the log says why,
once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger("gptrs.train")

TFLOPS = 1e12

# Dense tensor-core peaks in TFLOP/s (the datasheets' "with sparsity" figures halved), from NVIDIA's product
# pages and datasheets: H100 and H200 (SXM / PCIe / NVL), A100 (SXM4 and PCIe, 40 and 80 GB), L40S, L40, L4,
# A10, the Ada (RTX 4090) and Ampere GA102 (RTX 3090) architecture whitepapers (fp16/bf16 with fp32
# accumulate, what PyTorch uses), V100 and T4. 'tf32' is what fp32 matmuls run at when
# ``torch.backends.cuda.matmul.allow_tf32`` is on (the Trainer turns it on); 'fp32' without tensor cores.
# A dtype a GPU lacks (bf16 before Ampere) is left out: that peak is measured.
# First match wins: the more specific names (NVL, PCIe) come before the family name.
GPU_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"\bgh200\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"\bh200\b.*\bnvl\b", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"\bh200\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # H200 SXM
    (r"\bh100\b.*\bnvl\b", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"\bh100\b.*\bpcie\b", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"\bh100\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # "H100 80GB HBM3": SXM
    (r"\ba100\b", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bl40s\b", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"\bl40\b", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bl4\b", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\ba10\b", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),  # not the A10G (unpublished)
    (r"\brtx 4090\b", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"\brtx 3090\b(?! ti)", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    (r"\bv100\b.*\bpcie\b", {"fp16": 112.0, "fp32": 14.0}),
    (r"\bv100\b", {"fp16": 125.0, "fp32": 15.7}),  # SXM2
    (r"\bt4\b", {"fp16": 65.0, "fp32": 8.1}),
)

RETIME_GAIN = 1.25  # a log interval this much faster than at the last timing: time the peak again

_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def gpu_peak_flops(name: str, dtype: torch.dtype, *, tf32: bool = True) -> float | None:
    """The dense peak FLOP/s of the GPU called ``name`` (``torch.cuda.get_device_name``) in ``dtype``, from
    :data:`GPU_PEAKS`; None when the GPU or that dtype is not in the table. ``tf32``: fp32 matmuls run on
    tensor cores (``allow_tf32``)."""
    key = _DTYPE_KEYS.get(dtype)
    if key == "fp32" and tf32:
        key = "tf32"
    lowered = " ".join(name.lower().replace("-", " ").replace("_", " ").split())
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, lowered):
            tflops = peaks.get(key) if key else None
            return tflops * TFLOPS if tflops is not None else None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def best_of(trials: int, measure: Callable[[], float]) -> float:
    """The highest of ``trials`` measurements: load on a shared machine only ever slows a trial down, so the
    fastest one is the closest to what the hardware can do."""
    return max(measure() for _ in range(max(1, trials)))


def measure_peak_flops(
    device: torch.device | str, dtype: torch.dtype, *, max_n: int | None = None, trials: int = 5
) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the practical peak MFU is measured
    against. Grows the size until one matmul takes ~20 ms (or ``max_n``), then takes the best of ``trials``
    timings there. Uses no random numbers, so the global RNG (and a run's reproducibility) is untouched."""
    device = torch.device(device)
    max_n = max_n or (8192 if device.type == "cuda" else 4096)
    n = 512
    while True:
        a = torch.full((n, n), 0.5, dtype=dtype, device=device)
        b = torch.full((n, n), 0.25, dtype=dtype, device=device)
        a @ b  # warm-up (kernel selection, weight packing, allocator)
        _sync(device)

        def rate(a: torch.Tensor = a, b: torch.Tensor = b, n: int = n) -> float:
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            return 2 * n**3 / max(time.perf_counter() - t0, 1e-9)

        first = rate()
        if 2 * n**3 / first > 0.02 or n >= max_n:
            return max(first, best_of(trials - 1, rate))
        n *= 2


@dataclass
class PeakFlops:
    """The peak FLOP/s per process that MFU is measured against; ``source`` is 'config', 'table' or
    'measured'. ``remeasure`` (measured peaks only) measures again when the run outpaces the peak."""

    value: float
    source: str
    detail: str = ""  # the GPU's name for a table peak
    remeasure: Callable[[], float] | None = None
    max_remeasures: int = 6  # a measurement costs a few hundred ms: not at every log line
    remeasures: int = 0
    timed_at: float | None = None  # the run's throughput when the peak was last timed (measured peaks)
    _explained: bool = field(default=False, repr=False)

    @classmethod
    def for_device(
        cls, device: torch.device, dtype: torch.dtype, configured: float | None = None
    ) -> PeakFlops:
        """The peak for training in ``dtype`` on ``device``: configured, else the GPU table, else measured."""
        if configured:
            return cls(float(configured), "config")
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            tabled = gpu_peak_flops(name, dtype, tf32=torch.backends.cuda.matmul.allow_tf32)
            if tabled is not None:
                return cls(tabled, "table", name)

        def measure() -> float:
            return measure_peak_flops(device, dtype)

        return cls(measure(), "measured", remeasure=measure)

    def describe(self) -> str:
        """For the run's first log line, e.g. 'peak 989.40 TFLOP/s (NVIDIA H200, vendor table)'."""
        where = {"config": "training.peak_flops", "table": f"{self.detail}, vendor table"}.get(
            self.source, "measured"
        )
        return f"peak {self.value / TFLOPS:.2f} TFLOP/s ({where})"

    def _retime(self, achieved: float) -> None:
        """Time the peak again (the run got faster: the machine is quieter than at the last timing), keeping
        the best."""
        assert self.remeasure is not None
        self.remeasures += 1
        old, self.timed_at = self.value, achieved
        self.value = max(old, self.remeasure())
        if self.value > old:
            log.info(
                "peak FLOP/s re-timed on a quieter machine: %.3f TFLOP/s (was %.3f)",
                self.value / TFLOPS,
                old / TFLOPS,
            )

    def mfu(self, achieved: float, *, step: int | None = None) -> float | None:
        """``achieved / peak`` (both FLOP/s per process), or None when ``achieved`` beats every peak the run
        can support (see the module docstring). A measured peak only ever goes up."""
        if self.remeasure is not None:
            if self.timed_at is None:
                self.timed_at = achieved  # the start-up timing ran beside this interval's load
            elif achieved > RETIME_GAIN * self.timed_at and self.remeasures < self.max_remeasures:
                self._retime(achieved)
        if achieved <= self.value:
            return achieved / self.value
        old = self.value
        if self.remeasure is not None and self.remeasures < self.max_remeasures:
            self.remeasures += 1
            self.value = max(self.value, self.remeasure())
            if achieved <= self.value:
                log.info(
                    "peak FLOP/s re-measured: %.3f TFLOP/s (was %.3f; the machine was busier when it was "
                    "first measured)",
                    self.value / TFLOPS,
                    old / TFLOPS,
                )
                return achieved / self.value
        at = f" at step {step}" if step is not None else ""
        if self.source == "measured":
            self.value = achieved  # the hardware just did this much: the peak is at least that
            why = (
                f"the throughput{at} ({achieved / TFLOPS:.3f} TFLOP/s) beat the measured peak "
                f"({old / TFLOPS:.3f}), which the machine's load held down; the peak is raised to it and MFU "
                "is not shown where a record beats the peak"
            )
        else:
            why = (
                f"the throughput{at} ({achieved / TFLOPS:.3f} TFLOP/s) beats the {self.describe()}; MFU is "
                "not shown where a record beats it (set training.peak_flops to this device's peak)"
            )
        if not self._explained:
            log.info("MFU not shown: %s", why)
            self._explained = True
        return None
