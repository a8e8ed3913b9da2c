"""Frozen-encoder feature extraction: one pass over a loader, features and labels out.

Why its own module: kNN, the cached linear probe and the per-epoch evals all need the same thing
(encoder on all patches, pooled, no grad, eval mode, gathered over DDP ranks), done once.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from tqdm import tqdm

from evals.common import dist_info, unwrap
from pipeline import to_model_input


def embed(model: torch.nn.Module, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """Pooled features (N, D) from an MAE (`encode`) or any ViT with `forward_features`.

    `pool` is "cls" (the class token) or "avg" (mean of the patch tokens).
    """
    if pool not in ("cls", "avg"):
        raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")
    if hasattr(model, "encode"):
        return model.encode(images, pool=pool)
    tokens = model.forward_features(images)
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)


def bf16_autocast(device: torch.device):
    """bf16 autocast on CUDA (the encoders' and heads' forward passes), full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate a per-rank (n_r, ...) tensor over ranks, allowing different n_r."""
    if world == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = t.new_zeros((max(sizes) - t.shape[0],) + tuple(t.shape[1:]))
    padded = torch.cat([t, pad])
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device, pool: str = "cls",
                     max_samples: int | None = None, desc: str = "features",
                     progress: bool = True, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen encoder over `loader`; return (float32 [N, D], int64 [N]) on the CPU.

    Eval mode and no grad (the model's mode is restored afterwards); bf16 autocast on CUDA.
    `max_samples` caps the samples read (per rank: ceil(max_samples / world)). Under DDP the
    features of all ranks are gathered so every rank returns the whole set; pass `gather=False`
    when only this process runs the extraction (the trainer's rank-0 online evals), as a collective
    would wait forever for the other ranks.
    """
    device = torch.device(device)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    rank, world = dist_info() if gather else (0, 1)
    cap = None if max_samples is None else -(-int(max_samples) // world)
    feats, labels, seen = [], [], 0
    total = None
    try:
        total = len(loader)
    except TypeError:
        pass
    bar = tqdm(loader, desc=desc, total=total, leave=False, disable=not progress or rank != 0)
    try:
        for images, targets in bar:
            if cap is not None and seen >= cap:
                break
            images = to_model_input(images, device)   # uint8 batches: normalised here, on the device
            if cap is not None and seen + images.shape[0] > cap:
                images, targets = images[: cap - seen], targets[: cap - seen]
            with bf16_autocast(device):
                f = embed(net, images, pool)
            feats.append(f.float())
            labels.append(torch.as_tensor(targets).to(device).long().view(-1))
            seen += images.shape[0]
    finally:
        bar.close()
        net.train(was_training)
    if not feats:
        raise RuntimeError("extract_features: the loader yielded no batches")
    f = _gather(torch.cat(feats), world)
    y = _gather(torch.cat(labels), world)
    return f.cpu(), y.cpu()
