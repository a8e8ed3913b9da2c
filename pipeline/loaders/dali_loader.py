"""DALI back end: decodes the original JPEG folder (or file list), on the GPU when there is one.

Per epoch it builds one DALI pipeline:

    fn.external_source(this rank's encoded files in the shared epoch order, labels)
    train: fn.decoders.image_random_crop(area [0.2, 1], aspect [3/4, 4/3], output RGB)
           -> fn.resize(size, cubic, antialias) -> fn.crop_mirror_normalize(mirror=coin flip)
    eval:  fn.decoders.image(output RGB) -> fn.resize(shorter = size*256/224, cubic)
           -> fn.crop_mirror_normalize(centre crop)
    crop_mirror_normalize: uint8 CHW out; a float ``dtype`` is normalised by the consumer
    (:func:`pipeline.to_model_input`), not on DALI's threads

Why this shape:

* ``device="mixed"`` decoding (nvJPEG, plus the A100/H100 hardware JPEG decoder) when the target
  device is CUDA; otherwise a CPU-only pipeline with ``device_id=None`` (such a pipeline rejects
  any mixed/gpu operator, so nothing here uses one).
* ``image_random_crop`` fuses the crop into the decoder: libjpeg-turbo / nvJPEG decode only the
  region of interest, which is why DALI can beat "full decode" rates.
* The files fed to the pipeline are the shared epoch order from :mod:`pipeline.loaders.base`
  (already sharded by rank and cut at ``start_batch``), so DALI sees the same samples in the same
  order as the torch and FFCV back ends. The source ends with the epoch: nothing past it is
  decoded and the last batch is short, not padded. The
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

# DALI is imported inside the functions that use it: an optional back end (NVIDIA's wheel, often
# absent on CPU machines) whose import costs seconds, which no other importer of pipeline should pay


def _dali_pipeline(source, *, batch_size, image_size, train, num_threads, device_id, seed,
                   decoder_device, prefetch, normalize=False, crop_scale=transforms.RRC_SCALE):
    """Build (but not run) the per-epoch DALI pipeline described in the module docstring.

    ``source``: an iterable of batches ``(list of encoded files as uint8 arrays, int32 labels)``
    for :func:`fn.external_source`; the epoch ends when it is exhausted. ``normalize=True`` is
    the former float output (mean/std in ``crop_mirror_normalize``), kept so that a test can show
    that normalising on the consumer gives the same numbers.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=prefetch)
    def mae_pipe():
        jpegs, lab = fn.external_source(source=source, num_outputs=2, dtype=[types.UINT8, types.INT32],
                                        cycle="raise")
        images = decode_and_crop(jpegs, image_size=image_size, train=train, decoder_device=decoder_device,
                                 normalize=normalize, crop_scale=crop_scale)
        return images, lab

    return mae_pipe()


def decode_and_crop(jpegs, *, image_size, train, decoder_device, normalize=False,
                    crop_scale=transforms.RRC_SCALE):
    """The DALI ops from encoded files to N x 3 x S x S batches (shared with pipeline.bench's bare
    DALI pipeline, so both time the same decoder settings).

    Train: ``image_random_crop`` (area share in ``crop_scale``) decodes only the crop's region (libjpeg-turbo / nvJPEG ROI
    decode), then cubic antialiased resize and a random mirror. Output uint8 CHW unless
    ``normalize`` (float32, ImageNet mean/std).
    """
    from nvidia.dali import fn, types

    if train:
        images = fn.decoders.image_random_crop(
            jpegs, device=decoder_device, output_type=types.RGB,
            random_area=list(crop_scale), random_aspect_ratio=list(transforms.RRC_RATIO),
            num_attempts=10)
        images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_CUBIC,
                           antialias=True)
        mirror = fn.random.coin_flip(probability=0.5)
    else:
        images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=transforms.eval_resize_size(image_size),
                           interp_type=types.INTERP_CUBIC, antialias=True)
        mirror = 0
    norm = dict(mean=[m * 255 for m in transforms.IMAGENET_MEAN],
                std=[s * 255 for s in transforms.IMAGENET_STD], dtype=types.FLOAT) if normalize \
        else dict(dtype=types.UINT8)
    return fn.crop_mirror_normalize(images, crop=[image_size, image_size], crop_pos_x=0.5, crop_pos_y=0.5,
                                    mirror=mirror, output_layout="CHW", **norm)


class _EpochFiles:
    """This epoch's batches of encoded files, in the shared order, for ``fn.external_source``.

    Files are read here, on the thread that runs the pipeline, a few batches ahead of the
    consumer (DALI's prefetch); reading a page-cached file is a memcpy, the decoding is DALI's.
    The source ends with the epoch, so DALI decodes nothing past it (a reader that wraps around
    would decode ``prefetch`` batches of the next epoch only to drop them) and the last batch
    is short instead of padded.
    """

    def __init__(self, paths, labels, batch_size):
        self.paths, self.labels, self.batch_size = paths, labels, batch_size

    def __iter__(self):
        for i in range(0, len(self.paths), self.batch_size):
            paths = self.paths[i:i + self.batch_size]
            yield ([np.fromfile(p, dtype=np.uint8) for p in paths],
                   self.labels[i:i + self.batch_size].reshape(-1, 1))


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
                 drop_last=True, shuffle=True, decoder="auto", prefetch=2, val_labels=None,
                 crop_scale=transforms.RRC_SCALE):
        self.crop_scale = transforms.check_crop_scale(crop_scale)
        import nvidia.dali  # noqa: F401 - fail here, clearly, if DALI is not installed

        # plain_decode: files DALI would decode unlike open_rgb (alpha, CMYK, GIF...) are read
        # from open_rgb PNG copies (pipeline.sources), so DALI sees the betons' pixels
        split = list_images(path, val_labels=val_labels, plain_decode=True)
        super().__init__(len(split.paths), batch_size, seed, rank, world_size, drop_last, shuffle)
        self.path, self.paths = path, np.asarray(split.paths)
        self.read_paths = np.asarray(split.read_paths)
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
            _EpochFiles(self.read_paths[order], self.labels[order], self.batch_size),
            batch_size=self.batch_size, image_size=self.image_size, train=self.train,
            num_threads=self.num_threads, device_id=self.device_id,
            seed=base.sample_seed(self.seed, epoch, self.rank) % (2 ** 31 - 1),
            decoder_device=self.decoder, prefetch=self.prefetch, crop_scale=self.crop_scale)
        pipe.build()
        try:
            while True:
                try:
                    images, labels = pipe.run()
                except StopIteration:
                    return
                # the one copy: DALI reuses its output buffers at the next run()
                images = _to_torch(images, self.device)
                labels = _to_torch(labels, self.device).reshape(-1)
                yield transforms.finish_batch(images, labels, self.device, self.dtype, self.channels_last)
        finally:
            del pipe
