"""Mask samplers: which patches the encoder sees.

Every sampler returns the same three tensors as the official ``random_masking``:

- ``ids_keep``    (N, K) long: indices of the visible patches, K = ``int(L * (1 - mask_ratio))``;
- ``ids_restore`` (N, L) long: the inverse permutation, used by the decoder to put tokens back in place;
- ``mask``        (N, L) float: 1 = masked (hidden from the encoder), 0 = visible.

They all work the same way: each patch gets a *score*, patches are sorted by score and the K lowest
are kept. For ``random`` the score is the per-sample noise itself (exactly the official code). The
structured samplers add a large offset to the patches they want hidden and use the noise only to
break ties, so every sample keeps exactly K patches (the encoder needs equal-length sequences) even
when the structured pattern does not hit K on its own. Passing the same ``noise`` gives the same mask.
"""
from __future__ import annotations

import hashlib
import math
import random

import torch

SAMPLERS = ("random", "block", "grid")


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample, as the official code counts them."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def make_noise(batch: int, num_patches: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform per-sample noise (N, L); with a generator it is reproducible."""
    if generator is not None:
        device = generator.device
    return torch.rand(batch, num_patches, device=device, generator=generator)


def masks_from_scores(scores: torch.Tensor, len_keep: int):
    """Keep the ``len_keep`` lowest-scoring patches of each row -> (ids_keep, ids_restore, mask)."""
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    # mask = 1 where the patch's rank is past len_keep: the same values as the official ones + gather
    mask = (ids_restore >= len_keep).to(torch.float32)
    return ids_keep, ids_restore, mask


def _tie_break(noise: torch.Tensor) -> torch.Tensor:
    """Noise mapped to its per-row rank in [0, 1): any noise distribution orders patches the same way."""
    ranks = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return ranks.to(torch.float32) / noise.shape[1]


def random_mask(batch, grid, mask_ratio, noise=None, generator=None, device=None):
    """The paper's default: uniform random patches, keep the ``int(L*(1-r))`` with the smallest noise."""
    L = grid[0] * grid[1]
    if noise is None:
        noise = make_noise(batch, L, device, generator)
    return masks_from_scores(noise, num_visible(L, mask_ratio))


def grid_mask(batch, grid, mask_ratio=0.75, noise=None, generator=None, device=None):
    """The paper's grid-wise sampling: keep the top-left patch of every 2x2 cell (75% masked).

    At other ratios (or odd grids) the grid patches are still preferred and noise picks the rest.
    """
    gh, gw = grid
    L = gh * gw
    if noise is None:
        noise = make_noise(batch, L, device, generator)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    hidden = ((rows % 2 != 0) | (cols % 2 != 0)).reshape(1, L).to(noise.device, torch.float32)
    return masks_from_scores(2.0 * hidden + _tie_break(noise), num_visible(L, mask_ratio))


def _seed_from(noise_row: torch.Tensor) -> int:
    """A seed that depends only on one sample's noise, so its block mask is reproducible from that row
    alone: the same sample gets the same mask whether its row sits in a batch of 1 or of 4096, on one
    process or on one rank of many (the trainer gives each sample its row of one global noise matrix)."""
    data = noise_row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "little")


def _beit_blocks(rng: random.Random, gh: int, gw: int, num_masked: int, min_area: int,
                 min_aspect: float = 0.3) -> torch.Tensor:
    """BEiT's blockwise masking for one sample: drop random rectangles until ``num_masked`` are covered.

    Rectangles have area in [min_area, what is left] and log-uniform aspect ratio in [0.3, 1/0.3]; a
    rectangle is accepted when it adds new patches without overshooting. As in BEiT it may stop a little
    short; the caller tops up with random patches.
    """
    mask = torch.zeros(gh, gw, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masked:
        left_to_mask = num_masked - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min(min_area, left_to_mask), left_to_mask)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h <= gh and 0 < w <= gw:
                top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= left_to_mask:
                    region.fill_(True)
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask.reshape(-1)


def block_mask(batch, grid, mask_ratio, noise=None, generator=None, device=None, min_area: int | None = None):
    """BEiT-style blockwise masking: masked patches come in rectangles instead of salt-and-pepper.

    Rectangle placement uses a Python RNG per sample, seeded from that sample's row of ``noise`` (so the
    same noise row gives the same mask, whatever else is in the batch); without noise, the noise is
    drawn from ``generator``. ``min_area`` defaults to BEiT's 16 patches of 196, scaled to
    the grid.
    """
    gh, gw = grid
    L = gh * gw
    if noise is None:
        noise = make_noise(batch, L, device, generator)
    len_keep = num_visible(L, mask_ratio)
    if min_area is None:
        min_area = max(1, round(16 * L / 196))
    rows = noise.detach().to("cpu", torch.float32)  # one device-to-host copy for the whole batch
    blocks = torch.stack([_beit_blocks(random.Random(_seed_from(row)), gh, gw, L - len_keep, min_area)
                          for row in rows])
    hidden = blocks.to(noise.device, torch.float32)
    return masks_from_scores(2.0 * hidden + _tie_break(noise), len_keep)


_BY_NAME = {"random": random_mask, "block": block_mask, "grid": grid_mask}


def sample_mask(sampler: str, batch: int, grid: tuple[int, int], mask_ratio: float, noise=None,
                generator=None, device=None):
    """Dispatch by name ("random" | "block" | "grid") -> (ids_keep, ids_restore, mask)."""
    try:
        fn = _BY_NAME[sampler]
    except KeyError:
        raise ValueError(f"unknown mask sampler {sampler!r}; choose one of {SAMPLERS}") from None
    if noise is not None and noise.shape != (batch, grid[0] * grid[1]):
        raise ValueError(f"noise must have shape (N, L) = ({batch}, {grid[0] * grid[1]}), got {tuple(noise.shape)}")
    return fn(batch, grid, mask_ratio, noise=noise, generator=generator, device=device)
