"""What every loader back end shares: the epoch's sample order, sharding, and the Loader protocol.

One function, :func:`epoch_order`, decides which samples a rank sees in which order for a given
(seed, epoch). All three back ends (torch, FFCV, DALI) read their order from it, so switching back
end does not change what a resumed run sees, and ``set_epoch(e, start_batch=k)`` can skip the first
``k`` batches by slicing indices, without decoding anything.

Sharding rules (``rank``/``world_size``):

* the permutation is interleaved across ranks (``perm[rank::world_size]``, like
  ``torch.utils.data.DistributedSampler``), so every rank draws from the whole dataset;
* ``drop_last=True`` (training): every rank keeps the same number of whole batches,
  ``(num_samples // world_size) // batch_size``; the dropped tail changes every epoch because the
  permutation does. DDP never waits on a rank with an extra batch;
* ``drop_last=False`` (evaluation): every sample is seen exactly once across ranks. Ranks may then
  differ by one sample (and so by at most one batch): no sample is duplicated as padding, which is
  what feature extraction for kNN / linear probe wants.
"""
from __future__ import annotations

import math
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Loader(Protocol):
    """The interface every back end implements (see docs/INTERFACES.md)."""

    num_samples: int
    classes: list[str]
    num_classes: int

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The whole split's order for one epoch: a permutation seeded by (seed, epoch) only."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]))
    return rng.permutation(num_samples).astype(np.int64)


def shard_length(num_samples: int, rank: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Number of samples ``rank`` sees in one epoch (before ``start_batch`` skipping)."""
    if drop_last:
        return (num_samples // world_size) // batch_size * batch_size
    return len(range(rank, num_samples, world_size))


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0,
                world_size: int = 1, batch_size: int = 1, drop_last: bool = False,
                start_batch: int = 0) -> np.ndarray:
    """Sample indices (int64) that ``rank`` reads this epoch, starting at batch ``start_batch``.

    The result is always the tail of the full epoch's order for that rank:
    ``epoch_order(..., start_batch=k) == epoch_order(...)[k * batch_size:]``.
    """
    check_shard(rank, world_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    perm = epoch_permutation(num_samples, seed, epoch, shuffle)
    mine = perm[rank::world_size]
    mine = mine[:shard_length(num_samples, rank, world_size, batch_size, drop_last)]
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    return mine[start_batch * batch_size:]


def num_batches(num_samples: int, rank: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for ``rank`` (the loader's ``len``)."""
    n = shard_length(num_samples, rank, world_size, batch_size, drop_last)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch, independent of worker and batch."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


class EpochState:
    """The epoch bookkeeping every back end keeps (seed, epoch, start_batch, sharding).

    Back ends subclass it, call ``order()`` at the start of ``__iter__`` and yield
    ``len(order)/batch_size`` batches. ``start_batch`` applies to the next iteration only: after
    one pass the loader goes back to full epochs, so a trainer that resumes once and then calls
    ``set_epoch(e + 1)`` gets whole epochs again.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world_size: int,
                 drop_last: bool, shuffle: bool):
        check_shard(rank, world_size)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose seeded order the next ``iter()`` yields, from batch ``start_batch``."""
        if start_batch < 0 or start_batch > len(self):
            raise ValueError(f"start_batch={start_batch} outside [0, {len(self)}] batches of this epoch")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.rank, self.world_size, self.batch_size, self.drop_last)

    def order(self, consume: bool = True) -> np.ndarray:
        """This rank's indices for the current epoch from ``start_batch`` (resets ``start_batch``)."""
        out = epoch_order(self.num_samples, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                          rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
                          drop_last=self.drop_last, start_batch=self.start_batch)
        if consume:
            self.start_batch = 0
        return out


def batches_of(order: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Split an order into consecutive batches (the last one may be short)."""
    order = np.asarray(order, dtype=np.int64)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
