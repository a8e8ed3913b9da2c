"""Reconstruction samples for the run store: the same images, the same masks, every K epochs.

The images are fixed once per run: the first ``num`` samples of the split in the order the loaders'
shared ``epoch_order`` gives for (recons.seed, epoch 0), with evaluation transforms (resize + centre
crop). Their masking noise comes from a generator seeded with ``recons.seed``. So the inspector can
show one image's reconstruction improving over epochs, and a resumed run logs the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from model.visualize import reconstruction_panels
from pipeline import make_loader
from pipeline.loaders.base import epoch_order

from .config import ConfigError


@dataclass
class ReconSet:
    split: str
    image_ids: np.ndarray  # dataset indices of the images
    images: torch.Tensor  # (N, 3, H, W) normalised, on CPU
    noise: torch.Tensor  # (N, L) on CPU


def _fixed_ids(num_samples: int, seed: int, n: int) -> np.ndarray:
    return epoch_order(num_samples, seed=seed, epoch=0, shuffle=True)[:n]


def prepare(cfg, num_patches: int) -> list[ReconSet]:
    """Load the fixed images of each split (rank 0 only). Splits whose path is missing are skipped."""
    sets = []
    gen = torch.Generator().manual_seed(cfg.recons.seed)
    for split, path, n in (("train", cfg.data.train_path, cfg.recons.num_train),
                           ("val", cfg.data.val_path, cfg.recons.num_val)):
        if n <= 0 or not path or not Path(path).exists():
            continue
        try:
            loader = make_loader(cfg.data.backend, path, batch_size=n, image_size=cfg.data.image_size,
                                 train=False, shuffle=True, drop_last=False, num_workers=cfg.data.num_workers,
                                 device="cpu", seed=cfg.recons.seed)
            loader.set_epoch(0)
            images, _ = next(iter(loader))
        except ValueError as e:  # the source's own checks (pipeline.sources.SourceError): a user mistake
            if type(e).__module__.startswith("pipeline") or str(path) in str(e):
                raise ConfigError(f"'data.{split}_path' (read for reconstructions; recons.every=0 turns them "
                                  f"off): {e}") from None
            raise
        images = images[:n].float().cpu().contiguous()
        noise = torch.rand(images.shape[0], num_patches, generator=gen)
        sets.append(ReconSet(split, _fixed_ids(loader.num_samples, cfg.recons.seed, images.shape[0]),
                             images, noise))
        del loader
    return sets


def per_sample_loss(model, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The training loss of each image (same target and masking rule as ``model.forward_loss``)."""
    err = ((pred.float() - model.target_patches(imgs)) ** 2).mean(dim=-1)
    if getattr(model, "loss_on_all_patches", False):
        return err.mean(dim=1).cpu().numpy()
    mask = mask.float()
    return ((err * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)).cpu().numpy()


@torch.no_grad()
def log(model, sets: list[ReconSet], writer, epoch: int, mask_ratio: float, device, amp_ctx, seed: int = 0) -> None:
    """Run the fixed images through ``model`` and append panels + per-image loss to the run store."""
    was_training = model.training
    model.eval()
    try:
        for s in sets:
            imgs = s.images.to(device)
            with amp_ctx():
                _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=s.noise.to(device))
            pred, mask = pred.float(), mask.float()
            panels = reconstruction_panels(model, imgs, pred, mask, IMAGENET_MEAN, IMAGENET_STD)
            writer.log_reconstructions(
                epoch=epoch, split=s.split, image_ids=s.image_ids,
                original=panels["original"], masked=panels["masked"],
                reconstruction=panels["reconstruction"], pasted=panels["pasted"],
                mask=mask.cpu().numpy().astype(np.uint8), loss=per_sample_loss(model, imgs, pred, mask),
                mask_ratio=float(mask_ratio), seed=int(seed))
    finally:
        model.train(was_training)
