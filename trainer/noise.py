"""Masking noise as a pure function of (seed, step): no generator state to checkpoint.

Each optimizer step draws one noise matrix for the *global* batch (accumulation micro-batches x
ranks x per-device batch) and every process takes its own rows. The row a sample gets follows the
loaders' interleaved sharding (rank r holds global positions r, r+W, r+2W, ... of a batch, like
``DistributedSampler``; see ``pipeline.loaders.base``), so the same sample is masked the same way
whether the effective batch is spread over 1 or N processes or over accumulation steps. That is what
makes the 1-process vs 2-process equivalence test and bit-exact resume possible.
"""
from __future__ import annotations

import numpy as np
import torch

_TAG = 0x4D4145  # "MAE": keeps these streams apart from other uses of the run seed


def step_seed(seed: int, step: int) -> int:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), _TAG])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def step_noise(seed: int, step: int, rows: int, num_patches: int, device: torch.device) -> torch.Tensor:
    """(rows, num_patches) uniform noise for optimizer step ``step``, drawn on ``device``."""
    g = torch.Generator(device=device)
    g.manual_seed(step_seed(seed, step))
    return torch.rand(rows, num_patches, generator=g, device=device)


def micro_batch_rows(noise: torch.Tensor, micro: int, accum_steps: int, rank: int, world_size: int,
                     batch: int) -> torch.Tensor:
    """This rank's rows of the global noise for accumulation micro-batch ``micro``."""
    per_micro = noise.shape[0] // accum_steps
    chunk = noise[micro * per_micro:(micro + 1) * per_micro]
    return chunk[rank::world_size][:batch]
