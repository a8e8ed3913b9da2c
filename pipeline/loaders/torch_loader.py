"""The reference back end: torch DataLoader + PIL decoding + torchvision.transforms.v2 functional ops.

Why it looks the way it does:

* order comes from :mod:`pipeline.loaders.base` through a batch sampler that lives in the main
  process, so ``set_epoch`` works with persistent workers and skipped batches are never read;
* each sample is keyed by (index, epoch); its crop/flip generator is seeded from
  (seed, epoch, index), so batches are identical for any ``num_workers`` and after a resume;
* workers return uint8 batches (4x less to pin and copy); normalisation and the dtype/layout
  change happen once per batch on the target device (:func:`transforms.finish_batch`);
* ``decode="batched"`` reads bytes in workers and decodes a whole batch with
  ``torchvision.io.decode_jpeg(device=...)`` in the main process: on CUDA that is nvJPEG (the GPU
  decode baseline of the bench); on CPU it runs the same code with libjpeg-turbo, which is what the
  tests exercise. The files :func:`pipeline.sources.decode_hazards` flags at construction (CMYK,
  alpha, 16-bit, palette, EXIF rotation, ...) are decoded in the worker by ``open_rgb`` instead,
  so both modes give the pixels the ``.beton`` files hold.
* every file is decoded by :func:`pipeline.sources.open_rgb`, the converter's decoder (alpha
  composited on white, 16-bit scaled, EXIF orientation applied), and listed by the same scanner.
"""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..sources import cached_decode_hazards, open_rgb
from . import base, transforms
from .files import list_images


class _ImageFiles(Dataset):
    """Map-style dataset over (index, epoch) keys returning (uint8 3xSxS tensor | bytes, label)."""

    def __init__(self, paths, labels, image_size, train, seed, decode, hazards=frozenset(),
                 crop_scale=transforms.RRC_SCALE):
        self.paths, self.labels, self.hazards = paths, labels, hazards
        self.image_size, self.train, self.seed, self.decode = image_size, train, seed, decode
        self.crop_scale = crop_scale

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch = key
        path = self.paths[index]
        if self.decode == "batched":
            if path not in self.hazards:
                return torch.from_numpy(np.fromfile(path, dtype=np.uint8)), self.labels[index], index, epoch
            # decode_jpeg/decode_image would drop alpha, not scale 16 bits, ...: decode it here
            img = torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1).contiguous()
            return img, self.labels[index], index, epoch
        im = open_rgb(path)   # BadImageError names the file and says what is wrong with it
        gen = transforms.seeded_generator(base.sample_seed(self.seed, epoch, index)) if self.train else None
        return transforms.augment(im, self.image_size, self.train, gen, self.crop_scale), self.labels[index]


def _collate_bytes(items):
    data, labels, idx, epochs = zip(*items)
    return list(data), torch.tensor(labels, dtype=torch.int64), list(idx), list(epochs)


class _EpochBatches:
    """Batch sampler: this epoch's batches of (index, epoch) keys, read from the loader's state."""

    def __init__(self, state: base.EpochState):
        self.state = state

    def __iter__(self):
        epoch = self.state.epoch
        for b in base.batches_of(self.state.order(), self.state.batch_size):
            yield [(int(i), epoch) for i in b]

    def __len__(self):
        return len(self.state)


class TorchLoader(base.EpochState):
    """DataLoader-based loader; see module docstring. Build it with :func:`pipeline.make_loader`."""

    backend = "torch"

    def __init__(self, path, batch_size=128, image_size=224, train=True, num_workers=2, device="cpu",
                 dtype=torch.float32, channels_last=False, seed=0, rank=0, world_size=1,
                 drop_last=True, shuffle=True, decode="pil", prefetch_factor=2, val_labels=None,
                 crop_scale=transforms.RRC_SCALE):
        self.crop_scale = transforms.check_crop_scale(crop_scale)
        split = list_images(path, val_labels=val_labels)
        super().__init__(len(split.paths), batch_size, seed, rank, world_size, drop_last, shuffle)
        if decode not in ("pil", "batched"):
            raise ValueError(f"decode must be 'pil' or 'batched', got {decode!r}")
        self.path, self.paths, self.labels = path, split.paths, split.labels
        self.classes, self.num_classes = split.classes, len(split.classes)
        self.image_size, self.train, self.decode = image_size, train, decode
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        # batched: the files decode_jpeg/decode_image would read unlike open_rgb, found once here
        hazards = frozenset(cached_decode_hazards(split.paths)) if decode == "batched" else frozenset()
        ds = _ImageFiles(split.paths, split.labels, image_size, train, self.seed, decode, hazards,
                         self.crop_scale)
        self._dl = DataLoader(
            ds, batch_sampler=_EpochBatches(self), num_workers=num_workers,
            collate_fn=_collate_bytes if decode == "batched" else None,
            pin_memory=self.device.type == "cuda" and decode == "pil",
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self._dl:
            if self.decode == "batched":
                images, labels = self._decode_batch(*batch)
            else:
                images, labels = batch
            yield transforms.finish_batch(images, labels, self.device, self.dtype, self.channels_last)

    def _decode_batch(self, data, labels, indices, epochs):
        """Decode a list of encoded files on ``self.device`` at once, then crop each image.

        Items that are already 3-D uint8 images were decoded by ``open_rgb`` in the worker."""
        encoded = [i for i, d in enumerate(data) if d.dim() == 1]
        decoded = [d.to(self.device) if d.dim() == 3 else None for d in data]
        if encoded:
            blobs = [data[i] for i in encoded]
            try:
                with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    out = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=self.device,
                                      apply_exif_orientation=True)
            except RuntimeError:  # a PNG or odd JPEG in the batch: decode one by one on the CPU
                out = [decode_image(d, mode=ImageReadMode.RGB).to(self.device) for d in blobs]
            for i, img in zip(encoded, out):
                decoded[i] = img
        out = []
        for img, index, epoch in zip(decoded, indices, epochs):
            gen = transforms.seeded_generator(base.sample_seed(self.seed, epoch, index)) if self.train else None
            out.append(transforms.augment(img, self.image_size, self.train, gen, self.crop_scale))
        return torch.stack(out), labels
