"""The trainer's distributed pieces: joining the launch (``init``, ``DistInfo``, ``pick_device``:
``common.distributed``, shared with the eval CLIs, re-exported here), DDP wrapping, and the few
collectives we need. Only rank 0 writes files (run store, checkpoints); other ranks compute and
join collectives.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common.distributed import DistInfo, init, pick_device

__all__ = ["DistInfo", "init", "pick_device", "wrap_ddp", "barrier", "any_flags", "mean_scalar",
           "gather_objects", "cleanup"]


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


def broadcast_int(info: DistInfo, value: int) -> int:
    """Rank 0's ``value`` on every rank (a decision only rank 0 can take, e.g. the budget's epochs)."""
    if not info.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


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
