"""One loader interface, three back ends (``torch``, ``ffcv``, ``dali``), chosen by name.

See docs/INTERFACES.md for the contract and :mod:`pipeline.loaders.base` for the shared
epoch-seeded order and sharding that all three use.
"""
from __future__ import annotations

import torch

from .base import Loader, epoch_order
from .dali_loader import DALILoader
from .ffcv_loader import FFCVLoader
from .torch_loader import TorchLoader
from .transforms import IMAGENET_MEAN, IMAGENET_STD, RRC_SCALE, to_model_input

BACKENDS = ("torch", "ffcv", "dali")


def make_loader(backend: str, path, batch_size: int = 128, image_size: int = 224, train: bool = True,
                num_workers: int = 2, device="cpu", dtype: torch.dtype = torch.float32,
                channels_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                drop_last: bool | None = None, shuffle: bool | None = None,
                crop_scale: tuple[float, float] = RRC_SCALE, **options) -> Loader:
    """Build a loader yielding ``(images, labels)``: N x 3 x S x S images on ``device``, int64 labels.

    ``dtype=torch.uint8``: the images as the library produced them (the fast path; FFCV's are a
    view of its reused buffer, valid until the next batch is drawn); the consumer converts and
    normalises them in its step with :func:`pipeline.to_model_input`. A floating ``dtype``
    (default float32): normalised with ImageNet mean/std before they are yielded.

    ``train=True``: RandomResizedCrop(S, scale=crop_scale, ratio=(3/4, 4/3)) + horizontal flip;
    ``train=False``: resize shorter side to S*256/224, centre crop S. ``drop_last`` and
    ``shuffle`` default to ``train``. ``path``: a ``.beton`` for ``ffcv``; an image folder with
    class subfolders, or a ``path label`` file list, for ``dali`` and ``torch``.

    Back-end options (keyword, optional):
      torch: ``decode="pil"|"batched"`` (batched = torchvision.io.decode_jpeg on ``device``;
             nvJPEG on CUDA), ``prefetch_factor``.
      ffcv:  ``order="shared"|"random"|"quasi_random"|"sequential"``, ``os_cache`` (True),
             ``batches_ahead``, ``reuse_memory`` (True: FFCV's batch buffers allocated once,
             not every epoch).
      dali:  ``decoder="auto"|"cpu"|"mixed"``, ``prefetch``.

    ``crop_scale`` (all back ends, default (0.2, 1.0), MAE's): the train crop's (min, max) area as
    a share of the image, torchvision's ``scale``; ValueError unless 0 < min <= max <= 1. Eval
    (``train=False``) ignores it.
    """
    drop_last = train if drop_last is None else drop_last
    shuffle = train if shuffle is None else shuffle
    if isinstance(dtype, str):
        dtype = {"uint8": torch.uint8, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    kwargs = dict(batch_size=batch_size, image_size=image_size, train=train, num_workers=num_workers,
                  device=device, dtype=dtype, channels_last=channels_last, seed=seed, rank=rank,
                  world_size=world_size, drop_last=drop_last, shuffle=shuffle, crop_scale=crop_scale, **options)
    if backend == "torch":
        return TorchLoader(path, **kwargs)
    if backend == "ffcv":
        return FFCVLoader(path, **kwargs)
    if backend == "dali":
        return DALILoader(path, **kwargs)
    raise ValueError(f"unknown loader backend {backend!r}; choose one of {BACKENDS}")


__all__ = ["make_loader", "Loader", "BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD", "epoch_order",
           "to_model_input"]
