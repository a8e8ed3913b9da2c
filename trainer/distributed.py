"""Process-group set-up for ``torchrun`` (and ``srun``) launches, and the few collectives we need.

One process per device. ``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK; under
Slurm without torchrun, SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID are used (MASTER_ADDR and
MASTER_PORT must then be exported by the batch script). Backend: nccl on CUDA, gloo on CPU.
Only rank 0 writes files (run store, checkpoints); other ranks compute and join collectives.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


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
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init(device: str = "auto", timeout_minutes: float = 60.0) -> DistInfo:
    """Detect the launch, pick this process's device, and join the process group if world > 1."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
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


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``model`` in DistributedDataParallel, paying for ``find_unused_parameters`` only when needed.

    Unused-parameter detection walks the autograd graph after every forward; DDP without it hangs or
    fails at the second step when a trainable parameter gets no gradient. Which parameters an option
    leaves out is known from the model's configuration (``model.unused_parameters()``; the model
    freezes them itself), so detection is switched on only if one of them was made trainable again.
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    declared = getattr(inner, "unused_parameters", list)()
    trainable_unused = [n for n in declared if inner.get_parameter(n).requires_grad]
    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
               find_unused_parameters=bool(trainable_unused))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_flags(info: DistInfo, flags: list[bool]) -> list[bool]:
    """Element-wise OR of ``flags`` over ranks, so every rank takes the same decision (a signal that
    reached only one rank, a clock-based checkpoint that only rank 0's clock says is due)."""
    if not info.enabled:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def mean_scalar(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Average a scalar tensor over ranks (for logging the global loss)."""
    if not info.enabled:
        return value
    t = value.detach().clone().float().reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def gather_objects(info: DistInfo, obj) -> list:
    """Every rank's ``obj`` as a list indexed by rank (RNG states for the checkpoint)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
