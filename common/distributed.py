"""Joining a ``torchrun`` (or ``srun``) launch: which rank this process is, its device, the process
group. The one copy, used by the trainer (``trainer.distributed``, which adds DDP and its
collectives) and the eval CLIs (``evals.common.init_distributed``), which must not import each other.

One process per device. ``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK; under
Slurm without torchrun, SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID are used (MASTER_ADDR and
MASTER_PORT must then be exported by the batch script). Backend: nccl on CUDA, gloo on CPU.
Imports nothing of the project.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if os.environ.get(n, "") != "":
            return int(os.environ[n])
    return default


def pick_device(requested: str, local_rank: int) -> torch.device:
    """This process's device: "auto" is CUDA when there is one, else the CPU; "cuda" (or "cuda:N":
    the index is the launch's, ``local_rank``) the GPU of this rank; anything else as torch names it."""
    want_cuda = requested.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested} was requested but CUDA is not available")
    if want_cuda or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu" if requested == "auto" else requested)


def init(device: str = "auto", timeout_minutes: float = 60.0) -> DistInfo:
    """Detect the launch, pick this process's device, and join the process group if world > 1
    (rank and world size are the group's when one is already joined)."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=dev)
    if world > 1:
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError("multi-process launch without MASTER_ADDR/MASTER_PORT: use torchrun, or export them for srun")
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            rank=rank, world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)
