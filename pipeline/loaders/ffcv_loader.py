"""FFCV back end: reads a ``.beton`` written by ``python -m pipeline.build_ffcv``.

The pipeline, declared as a list of stages like FFCV's own examples:

    image: RandomResizedCropRGBImageDecoder | CenterCropRGBImageDecoder -> in-place horizontal flip
           -> ToTensor -> ToDevice(non_blocking) -> ToTorchImage          (uint8, N x 3 x S x S)
    label: IntDecoder -> ToTensor -> Squeeze -> ToDevice(non_blocking)

Notes on the choices (see also "Known traps" in the issue):

* ``dtype=torch.uint8`` yields FFCV's batch exactly as the library produces it (N x 3 x S x S,
  channels-last memory, a view of FFCV's reused buffer: valid until the next batch is drawn;
  labels are always a fresh tensor the consumer owns);
  the consumer normalises it in its step with :func:`pipeline.to_model_input`. A float ``dtype``
  normalises here, in torch (:func:`transforms.finish_batch`), not with FFCV's
  ``NormalizeImage``: placed after ``ToTensor`` it makes FFCV 1.0.2 hang while building the
  Loader on a GPU-less machine, and its GPU mode needs cupy.
* Resampling: FFCV's crop decoders resize with OpenCV ``INTER_AREA`` (no bicubic option). For the
  downscaling that dominates RandomResizedCrop this is the closest antialiased filter; upscaled
  small crops come out a little softer than torch's bicubic. Statistics agree (tested).
* Order: by default FFCV is handed the shared epoch order of :mod:`pipeline.loaders.base`
  (a ``TraversalOrder`` returning our indices), so the three back ends see the same samples in
  the same order, ``start_batch`` skips without decoding, and sharding is ours (``distributed``
  is still set under torchrun for the record). ``order="random" | "quasi_random"`` switches to
  FFCV's own seeded orders instead (``quasi_random`` with ``os_cache=False`` for datasets larger
  than RAM; FFCV forbids it with ``distributed=True``); those need ``torch.distributed`` to be
  initialised when ``world_size > 1`` and cannot resume mid-epoch.
* FFCV's crop and flip draw from numba's per-thread RNG, which FFCV does not seed: the order is
  reproducible, the augmentation is not bit-exact (use the torch back end for bit-exact tests).
"""
from __future__ import annotations

import operator
import queue
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from numpy.random import rand  # numba compiles it to its per-thread generator, as in FFCV's op

from ..beton import check_beton
from . import base, transforms
from .files import read_class_names

# FFCV itself is imported inside the functions that use it: it pulls in numba and cv2 (seconds),
# which every importer of pipeline (and of make_loader's other back ends) would pay

_FFCV_ORDERS = ("shared", "random", "quasi_random", "sequential")


def _is_numba_finalizer_keyerror(unraisable) -> bool:
    """True for numba 0.68's harmless dispatcher-finalizer race: when a dispatcher FFCV compiled for
    a loader is garbage-collected, its finalizer (numba/core/dispatcher.py, ``finalizer``) walks the
    dispatcher's overload table while it is being torn down and raises KeyError; the finalizer only
    drops references, so nothing is lost, but Python prints a 10-line "Exception ignored" trace."""
    if unraisable.exc_type is not KeyError or unraisable.exc_traceback is None:
        return False
    tb = unraisable.exc_traceback
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return code.co_name == "finalizer" and Path(code.co_filename).as_posix().endswith("numba/core/dispatcher.py")


def _quiet_numba_finalizer() -> None:
    """Install (once) an unraisable-exception hook that drops only that trace and passes every
    other one to the hook that was there before."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_numba_finalizer_keyerror", False):
        return

    def hook(unraisable):
        if not _is_numba_finalizer_keyerror(unraisable):
            previous(unraisable)

    hook._drops_numba_finalizer_keyerror = True
    sys.unraisablehook = hook


class FFCVLoader(base.EpochState):
    """Loader over a .beton; see module docstring. Build it with :func:`pipeline.make_loader`."""

    backend = "ffcv"

    def __init__(self, path, batch_size=128, image_size=224, train=True, num_workers=2, device="cpu",
                 dtype=torch.float32, channels_last=False, seed=0, rank=0, world_size=1,
                 drop_last=True, shuffle=True, order="shared", os_cache=True, batches_ahead=3,
                 reuse_memory=True, crop_scale=transforms.RRC_SCALE):
        crop_scale = transforms.check_crop_scale(crop_scale)
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.decoders import (CenterCropRGBImageDecoder, IntDecoder,
                                          RandomResizedCropRGBImageDecoder)
        from ffcv.loader import Loader, OrderOption
        from ffcv.reader import Reader
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

        _quiet_numba_finalizer()
        path = Path(path)
        check_beton(path)
        if order not in _FFCV_ORDERS:
            raise ValueError(f"order must be one of {_FFCV_ORDERS}, got {order!r}")
        if order == "quasi_random" and world_size > 1:
            raise ValueError("FFCV's QUASI_RANDOM order does not support distributed=True; "
                             "use order='shared' or 'random' with world_size > 1")
        try:
            reader = Reader(str(path))
        # what FFCV's Reader raises on a file check_beton let through (a custom field type, a short
        # read): AssertionError (version), KeyError (type id), ValueError / TypeError (fields, numpy)
        except (AssertionError, KeyError, OSError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .beton ({type(e).__name__}: {e})") from e
        image_field = next((n for n, h in reader.handlers.items() if isinstance(h, RGBImageField)), None)
        label_field = next((n for n, h in reader.handlers.items() if isinstance(h, IntField)), None)
        if image_field is None or label_field is None:
            raise ValueError(f"{path}: needs an RGBImageField and an IntField, has "
                             f"{ {n: type(h).__name__ for n, h in reader.handlers.items()} }")
        super().__init__(reader.num_samples, batch_size, seed, rank, world_size, drop_last, shuffle)
        self.path, self.image_size, self.train = path, image_size, train
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        self.order_mode, self.crop_scale = order, crop_scale
        labels = np.asarray(reader.metadata[f"f{list(reader.handlers).index(label_field)}"])
        self.classes = read_class_names(path.parent) or [str(i) for i in range(int(labels.max()) + 1)]
        self.num_classes = len(self.classes)

        size = (image_size, image_size)
        if train:
            decoder = RandomResizedCropRGBImageDecoder(size, scale=crop_scale,
                                                       ratio=transforms.RRC_RATIO)
            image_ops = [decoder, in_place_flip()]
        else:
            image_ops = [CenterCropRGBImageDecoder(size, ratio=image_size / transforms.eval_resize_size(image_size))]
        image_ops.append(ToTensor())
        label_ops = [IntDecoder(), ToTensor(), Squeeze()]
        if self.device.type == "cuda":
            image_ops.append(ToDevice(self.device, non_blocking=True))
            label_ops.append(ToDevice(self.device, non_blocking=True))
        image_ops.append(ToTorchImage(channels_last=True))

        common = dict(batch_size=batch_size, num_workers=max(1, num_workers), os_cache=os_cache,
                      distributed=world_size > 1, batches_ahead=batches_ahead,
                      pipelines={image_field: image_ops, label_field: label_ops})
        if order == "shared":
            self._next_order = self.order(consume=False)
            self._ffcv = Loader(str(path), order=_SharedOrder(self), drop_last=False, **common)
        else:
            ffcv_order = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
                          "sequential": OrderOption.SEQUENTIAL}[order]
            self._ffcv = Loader(str(path), order=ffcv_order, seed=seed, drop_last=drop_last, **common)
        self.reuse_memory = bool(reuse_memory)
        if self.reuse_memory:
            _reuse_batch_memory(self._ffcv)
        self._running = None   # the running epoch's EpochIterator (its thread fills the slots)

    def __len__(self) -> int:
        return super().__len__() if self.order_mode == "shared" else len(self._ffcv)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.order_mode == "shared":
            self._next_order = self.order()
            if len(self._next_order) == 0:
                return
        else:
            if self.start_batch:
                raise NotImplementedError(f"start_batch needs order='shared' (FFCV order={self.order_mode!r})")
            self._ffcv.next_epoch = self.epoch
        for images, labels in self._epoch():
            if self.dtype == torch.uint8:
                # FFCV's own batch, untouched: no pass over the pixels on this thread, which would
                # compete with FFCV's decoding threads for the same cores (that pass, float
                # normalisation + a layout copy, is what made this loader 0.2-0.5x bare FFCV).
                # The images alias FFCV's buffer slot: valid until the next batch is drawn, which
                # is how long a training step holds them (pipeline.to_model_input makes a new
                # tensor). Labels are copied (a few hundred bytes): FFCV's IntDecoder already
                # gives int64, so a plain .to(int64) would hand out its reused buffer, and a
                # consumer that keeps labels (feature extraction) would see later batches' labels.
                yield images, labels.to(torch.int64, non_blocking=True, copy=True)
            else:
                yield transforms.finish_batch(images, labels, self.device, self.dtype, self.channels_last)

    def _epoch(self):
        """FFCV's iterator for one epoch, never two at once (see :func:`_reuse_batch_memory`).

        An epoch left early (a ``break``, a capped feature extraction) still has FFCV's thread
        decoding into the shared buffer slots: it is stopped and joined before the next epoch
        starts, and when this generator is closed.
        """
        if self._running is not None:
            _stop(self._running)  # an earlier epoch left early: its thread still writes the slots
        if self.reuse_memory and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the consumer is done with the slots
        running = self._running = iter(self._ffcv)
        try:
            yield from running
        finally:
            _stop(running)  # only this epoch's: a newer one may be running by the time this closes
            if self._running is running:
                self._running = None


def _stop(epoch_iterator) -> None:
    """Stop an FFCV EpochIterator's thread and wait for it.

    Its put() loop checks ``terminate_event`` only when a put times out (0.5 s) on a full queue,
    so the queue is left full while the thread still has batches to decode: draining it would let
    every put succeed and the thread decode the rest of the epoch before it looked (5.6 s for a
    5,000-image epoch left after one batch). Its final ``put(None)`` (end of epoch) blocks without
    a timeout, so once its order is used up (``iter_ixes`` exhausted) the queue is drained.
    """
    epoch_iterator.terminate_event.set()
    while epoch_iterator.is_alive():
        if operator.length_hint(epoch_iterator.iter_ixes) == 0:
            try:
                while True:
                    epoch_iterator.output_queue.get_nowait()
            except queue.Empty:
                pass
        epoch_iterator.join(timeout=0.05)


def in_place_flip(flip_prob: float = 0.5):
    """FFCV's RandomHorizontalFlip, done in place on the decoder's output.

    FFCV's own op copies every image into a second buffer, the flipped half through a
    reverse-strided slice that numba compiles to a byte loop: 180 us per 224-px image, a third of
    the whole pipeline's CPU time (1,740 vs 2,650 images per CPU-second with and without it).
    Swapping the pixels of the flipped images' rows in place takes 14 us and leaves the others
    untouched. Same draws (numba's per-thread ``rand``), same result.
    """
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class InPlaceRandomHorizontalFlip(Operation):
        def __init__(self, flip_prob: float = 0.5):
            super().__init__()
            self.flip_prob = flip_prob

        def generate_code(self):
            my_range = Compiler.get_iterator()
            flip_prob = self.flip_prob

            def flip(images, _unused):
                should_flip = rand(images.shape[0]) < flip_prob
                n, h, w, c = images.shape
                rows = images.reshape(n, h, w * c)
                for i in my_range(n):
                    if should_flip[i]:
                        for r in range(h):
                            row = rows[i, r]
                            for x in range(w // 2):
                                a, b = c * x, c * (w - 1 - x)
                                for k in range(c):
                                    t = row[a + k]
                                    row[a + k] = row[b + k]
                                    row[b + k] = t
                return images

            flip.is_parallel = True
            return flip

        def declare_state_and_memory(self, previous_state):
            return replace(previous_state, jit_mode=True), None

    return InPlaceRandomHorizontalFlip(flip_prob)


def _reuse_batch_memory(ffcv_loader) -> None:
    """Let FFCV allocate its batch buffers once per Loader instead of once per epoch.

    FFCV 1.0.2 allocates all buffer slots afresh when each epoch starts (about 570 MB at 224 px,
    batch 256, batches_ahead 3): the page faults and zeroing of that memory took about a quarter
    of the CPU time of bare FFCV on 5-batch epochs (1,249 vs 1,956 images per CPU-second for
    one long epoch). Reusing the buffers is safe because this loader never runs two FFCV epochs
    at once (:meth:`FFCVLoader._epoch`) and a batch is only valid until the next one is drawn.
    """
    graph = ffcv_loader.graph
    allocate, cache = graph.allocate_memory, {}

    def allocate_memory(batch_size, batch_slots):
        if (batch_size, batch_slots) not in cache:
            cache[(batch_size, batch_slots)] = allocate(batch_size, batch_slots)
        return cache[(batch_size, batch_slots)]
    graph.allocate_memory = allocate_memory


def _shared_order_class():
    from ffcv.traversal_order.base import TraversalOrder

    class SharedOrder(TraversalOrder):
        """Hands FFCV the indices computed by pipeline.loaders.base for the current epoch."""

        def __init__(self, owner: FFCVLoader):  # noqa: D401 - FFCV calls order(loader) on instances
            self.owner = owner

        def __call__(self, loader):
            self.loader = loader
            self.indices = loader.indices
            self.seed, self.distributed, self.sampler = loader.seed, loader.distributed, None
            return self

        def sample_order(self, epoch: int):
            return self.owner._next_order.astype(np.uint64)

    return SharedOrder


def _SharedOrder(owner):
    return _shared_order_class()(owner)
