"""Device choice and multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m gptrs.train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; we then join
the process group (NCCL on CUDA, gloo on CPU), pin each process to its GPU, and let rank 0 alone log and
write files. Without those variables everything here degrades to a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from gptrs.errors import GptrsError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda, else mps, else cpu. Asking for a device that is not there is a GptrsError."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise GptrsError(
                f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)"
            )
        if ":" not in name:
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise GptrsError(
                f"--device {device}: MPS is not available on this machine (use --device cpu or auto)"
            )
    elif kind != "cpu":
        raise GptrsError(f"--device {device}: unknown device (expected auto, cpu, cuda or mps)")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise GptrsError(f"--device {device}: {e}") from None


def dist_info_from_env() -> DistInfo:
    """Rank and world size from torchrun's environment variables (single process if absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise GptrsError(f"bad torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {e}") from None
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def setup_distributed(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun (idempotent) and pick this process's device."""
    info = dist_info_from_env()
    dev = resolve_device(device, info.local_rank)
    if info.is_distributed and not (dist.is_available() and dist.is_initialized()):
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if info.is_distributed and not info.is_main:
        logging.getLogger("gptrs").setLevel(logging.WARNING)  # rank 0 alone reports progress
    return info, dev


def current_dist_info() -> DistInfo:
    """Rank and world size of the initialised process group (a single process if there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            world_size=dist.get_world_size(),
        )
    return DistInfo()


def joined_dist_info() -> DistInfo:
    """:func:`current_dist_info`, refusing a torchrun launch whose process group was never joined: each
    process would otherwise train alone as rank 0, all of them writing the same files."""
    info, launched = current_dist_info(), dist_info_from_env()
    if launched.is_distributed and not info.is_distributed:
        raise GptrsError(
            f"started as one of {launched.world_size} processes (torchrun) but no process group is "
            "initialised: call gptrs.training.distributed.setup_distributed() first"
        )
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is set on any rank, so all ranks take the same decision (stop, save)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
