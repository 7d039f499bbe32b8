"""What a config costs before anything is allocated: its parameters, and the memory of one training step.

The estimate is arithmetic on the config and errs low, so that a refusal is never wrong: fp32 weights,
gradients and the two AdamW moments (what the trainer keeps whatever the autocast dtype), plus the activations
one micro-batch (``training.batch_size`` x ``model.max_seq_len`` tokens) saves for backward, counted in 16-bit
elements when mixed precision is on. Allocator slack, the CUDA context and fragmentation only add.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from gptrs.config.problems import Problem, show
from gptrs.config.schema import Config, count_parameters, resolve_model

BYTES_PER_PARAMETER = 16  # fp32 weight 4 + gradient 4 + AdamW exp_avg 4 + exp_avg_sq 4
# Muon keeps one momentum buffer per matrix (the embeddings' AdamW two moments are counted as one too: errs low).
_BYTES_PER_PARAMETER_MUON = 12
# No single machine holds this (16 TiB): a config past it is refused everywhere, whatever the device, so that
# `--check` catches a typo'd width or layer count without knowing where the run will go.
MAX_TRAINING_BYTES = 1 << 44


@dataclass(frozen=True)
class Estimate:
    """Bytes of one training step, by what holds them."""

    parameters: int
    weights: int  # fp32 weights + gradients + AdamW moments
    activations: int  # what one micro-batch saves for backward, and its logits

    @property
    def total(self) -> int:
        return self.weights + self.activations


def estimate(config: Config, vocab_size: int | None = None) -> Estimate:
    """The parameters and training-step memory of `config` (`vocab_size` as ``count_parameters`` takes it)."""
    m, t = resolve_model(config.model), config.training
    params = count_parameters(config, vocab_size)
    vocab = m.vocab_size or vocab_size or config.tokenizer.vocab_size
    assert m.kv_heads is not None  # resolved
    # Elements one token saves for backward in one block: the two norms' inputs and outputs (4d), queries (d),
    # keys and values (2 kv), the attention output and its projection (2d), the two residual sums (2d), the
    # feed-forward hidden layer before and after the activation (2ff), and with the reference attention each
    # head's softmax row (heads x T). Rotary and QK-norm copies are left out, erring low.
    d, kv = m.embed_dim, m.kv_heads * (m.embed_dim // m.heads)
    per_block = 9 * d + 2 * kv + 2 * m.ff_dim + (m.heads * m.max_seq_len if m.attention == "reference" else 0)
    if m.gradient_checkpointing:  # every block's input (d), plus one block recomputed at a time
        per_token = m.num_layers * d + per_block
    else:
        per_token = m.num_layers * per_block
    per_token += 3 * d + 2 * vocab  # embeddings and final norm; logits and their log-softmax
    element = 4 if t.mixed_precision is False else 2  # errs low: 16-bit when autocast may be on
    tokens = t.batch_size * m.max_seq_len
    per_param = _BYTES_PER_PARAMETER_MUON if t.optimizer == "muon" else BYTES_PER_PARAMETER
    return Estimate(params, params * per_param, tokens * per_token * element)


def human_count(n: int) -> str:
    """1,548,672; 19.8 billion; 2e+15 (a count as a person reads it)."""
    if n < 10**9:
        return f"{n:,}"
    if n < 10**15:
        return f"{n / 10**9:.3g} billion"
    return f"{float(min(n, 10**300)):.3g}"


def human_bytes(n: float) -> str:
    """1.5 GB, 23 GB, 16 TB (powers of 1024, the way memory is sold)."""
    n = float(min(n, 10**300))  # a huge int would overflow the float division below
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            break
        n /= 1024
    if unit == "bytes":
        return f"{int(n)} bytes"
    if n >= 1e6:
        return f"{n:.3g} {unit}"
    return f"{n:.1f} {unit}" if n < 10 else f"{n:,.0f} {unit}"


def _value(config: Config, key: str) -> int:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _too_big(config: Config, est: Estimate, room: str) -> Problem:
    # The keys a size comes from, each with its preset-scale value: the one furthest past its scale is named
    # (a layer count of 10**6 is the mistake, not the width next to it).
    vocab = "model.vocab_size" if config.model.vocab_size is not None else "tokenizer.vocab_size"
    scales = {"model.num_layers": 24, "model.embed_dim": 1024, "model.ff_dim": 4096, vocab: 65536}
    if est.activations > est.weights:  # these two cost no parameters
        scales |= {"model.max_seq_len": 1024, "training.batch_size": 16}
    key = max(scales, key=lambda k: math.log(max(_value(config, k), 1)) - math.log(scales[k]))
    return Problem(
        key,
        f"{show(_value(config, key))} makes a model of {human_count(est.parameters)} parameters that needs about "
        f"{human_bytes(est.total)} to train ({human_bytes(est.weights)} weights, gradients and AdamW "
        f"state, {human_bytes(est.activations)} activations at training.batch_size "
        f"{config.training.batch_size}); {room}",
    )


def check_absolute(config: Config) -> None:
    """Raise a Problem (naming the key to change) for a config no machine could train: past
    ``MAX_TRAINING_BYTES``. Config validation calls it, so `--check` refuses such a file without a device."""
    est = estimate(config)
    if est.total > MAX_TRAINING_BYTES:
        room = f"no single machine has that (the limit is {human_bytes(MAX_TRAINING_BYTES)})"
        raise _too_big(config, est, room)


def check_fits(config: Config, available: int | None, device: str, vocab_size: int | None = None) -> None:
    """Raise a one-line ConfigError naming the key when a training step of `config` cannot fit in
    `available` bytes (the memory of `device`, as ``device_memory`` reads it; None: unknown, no check)."""
    est = estimate(config, vocab_size)
    if available is not None and est.total > available:
        room = f"the device ({device}) has {human_bytes(available)}"
        raise _too_big(config, est, room).error(None) from None


def host_memory() -> int | None:
    """Bytes this process may use on the host: physical RAM, lowered by a cgroup limit or RLIMIT_AS when set."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    with contextlib.suppress(OSError):
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        limits += [int(text)] if text.isdigit() else []
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        limits += [soft] if soft != resource.RLIM_INFINITY and soft > 0 else []
    return min(limits) if limits else None


def device_memory(device: object) -> int | None:
    """Bytes a training step may use on `device` (a torch.device or its name): the host's (``host_memory``) for
    the CPU, the card's total for CUDA; None where unknown (MPS shares the host's memory in ways not measured)."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind == "cpu":
        return host_memory()
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[1])  # type: ignore[arg-type]
    return None
