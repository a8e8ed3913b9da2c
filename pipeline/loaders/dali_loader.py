"""DALI back end: decodes the original JPEG folder (or file list), on the GPU when there is one.

Per epoch it builds one DALI pipeline:

    fn.readers.file(files=<this rank's files in the shared epoch order>, labels=...)
    train: fn.decoders.image_random_crop(area [0.2, 1], aspect [3/4, 4/3], output RGB)
           -> fn.resize(size, cubic, antialias) -> fn.crop_mirror_normalize(mirror=coin flip)
    eval:  fn.decoders.image(output RGB) -> fn.resize(shorter = size*256/224, cubic)
           -> fn.crop_mirror_normalize(centre crop)
    crop_mirror_normalize: mean/std * 255, CHW float32

Why this shape:

* ``device="mixed"`` decoding (nvJPEG, plus the A100/H100 hardware JPEG decoder) when the target
  device is CUDA; otherwise a CPU-only pipeline with ``device_id=None`` (such a pipeline rejects
  any mixed/gpu operator, so nothing here uses one).
* ``image_random_crop`` fuses the crop into the decoder: libjpeg-turbo / nvJPEG decode only the
  region of interest, which is why DALI can beat "full decode" rates.
* The file list handed to the reader is the shared epoch order from :mod:`pipeline.loaders.base`
  (already sharded by rank and cut at ``start_batch``), so DALI sees the same samples in the same
  order as the torch and FFCV back ends; the reader's own shuffling and sharding are off. The
  pipeline's RNG seed is derived from (seed, epoch, rank): an epoch's augmentation is reproducible
  from its start; after a mid-epoch resume the order is exact but the crops are fresh draws.
* DALI output buffers are only valid until the next ``run()``: every batch is copied into a new
  torch tensor before it is yielded.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from . import base, transforms
from .files import list_images


def _dali_pipeline(files, labels, *, batch_size, image_size, train, num_threads, device_id, seed,
                   decoder_device, prefetch):
    """Build (but not run) the per-epoch DALI pipeline described in the module docstring."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=prefetch)
    def mae_pipe():
        jpegs, lab = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                     pad_last_batch=True, name="Reader")
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, device=decoder_device, output_type=types.RGB,
                random_area=list(transforms.RRC_SCALE), random_aspect_ratio=list(transforms.RRC_RATIO),
                num_attempts=10)
            images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_CUBIC,
                               antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=transforms.eval_resize_size(image_size),
                               interp_type=types.INTERP_CUBIC, antialias=True)
            mirror = 0
        images = fn.crop_mirror_normalize(
            images, crop=[image_size, image_size], crop_pos_x=0.5, crop_pos_y=0.5, mirror=mirror,
            mean=[m * 255 for m in transforms.IMAGENET_MEAN], std=[s * 255 for s in transforms.IMAGENET_STD],
            output_layout="CHW", dtype=types.FLOAT)
        return images, lab

    return mae_pipe()


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copy a DALI TensorList (CPU or GPU) into a fresh torch tensor (DALI reuses its buffers)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    from nvidia.dali.tensors import TensorListGPU

    on_gpu = isinstance(tensor_list, TensorListGPU)
    t = tensor_list.as_tensor()
    out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device if on_gpu else "cpu")
    # the copy is queued on torch's current stream, so later torch work is ordered after it
    feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(out.device) if on_gpu else None)
    return out


class DALILoader(base.EpochState):
    """DALI-based loader; see module docstring. Build it with :func:`pipeline.make_loader`."""

    backend = "dali"

    def __init__(self, path, batch_size=128, image_size=224, train=True, num_workers=2, device="cpu",
                 dtype=torch.float32, channels_last=False, seed=0, rank=0, world_size=1,
                 drop_last=True, shuffle=True, decoder="auto", prefetch=2):
        import nvidia.dali  # noqa: F401 - fail here, clearly, if DALI is not installed

        split = list_images(path)
        super().__init__(len(split.paths), batch_size, seed, rank, world_size, drop_last, shuffle)
        self.path, self.paths = path, np.asarray(split.paths)
        self.labels = np.asarray(split.labels, dtype=np.int32)
        self.classes, self.num_classes = split.classes, len(split.classes)
        self.image_size, self.train = image_size, train
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        self.num_threads, self.prefetch = max(1, num_workers), prefetch
        on_gpu = self.device.type == "cuda" and torch.cuda.is_available()
        if decoder == "auto":
            decoder = "mixed" if on_gpu else "cpu"
        if decoder not in ("cpu", "mixed"):
            raise ValueError(f"decoder must be 'auto', 'cpu' or 'mixed', got {decoder!r}")
        if decoder == "mixed" and not on_gpu:
            raise ValueError("DALI decoder='mixed' needs device='cuda' and a visible GPU")
        self.decoder = decoder
        self.device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if decoder == "mixed" else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        order = self.order()
        if len(order) == 0:
            return
        pipe = _dali_pipeline(
            [str(p) for p in self.paths[order]], self.labels[order].tolist(),
            batch_size=self.batch_size, image_size=self.image_size, train=self.train,
            num_threads=self.num_threads, device_id=self.device_id,
            seed=base.sample_seed(self.seed, epoch, self.rank) % (2 ** 31 - 1),
            decoder_device=self.decoder, prefetch=self.prefetch)
        pipe.build()
        try:
            remaining = len(order)
            while remaining > 0:
                images, labels = pipe.run()
                n = min(remaining, self.batch_size)
                images = _to_torch(images, self.device)[:n]
                labels = _to_torch(labels, self.device)[:n].reshape(-1)
                remaining -= n
                yield transforms.finish_batch(images, labels, self.device, self.dtype,
                                              self.channels_last, normalized=True)
        finally:
            del pipe
