"""Batches in, losses out: the batch formats the trainer accepts, the loss of a model's output, and the
validation pass (mean loss over a set of batches, perplexity, bits per byte).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gptrs.errors import DataError
from gptrs.training.precision import Precision


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
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


def loss_of(out: Any) -> torch.Tensor:
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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type == "cuda")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    device: torch.device,
    precision: Precision,
    max_batches: int | None = None,
    bytes_per_token: float | None = None,
) -> dict[str, float]:
    """Mean validation loss (token-weighted, summed over every rank of a process group), perplexity and,
    when ``bytes_per_token`` is known, bits per byte. The model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total = torch.zeros((), dtype=acc, device=device)
    count = torch.zeros((), dtype=acc, device=device)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = split_batch(batch)
            x, y = to_device(x, device), to_device(y, device)
            with precision.autocast():
                loss = loss_of(model(x, y))
            n = y.numel()
            total += loss.to(acc) * n
            count += n
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        both = torch.stack([total, count])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        total, count = both[0], both[1]
    if count.item() == 0:
        raise DataError(
            "the evaluation data yielded no batches (it must be re-iterable: a list, a DataLoader, ...)"
        )
    val_loss = float(total / count)
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
    if bytes_per_token:
        out["val_bpb"] = val_loss / math.log(2) / float(bytes_per_token)
    return out
