"""MAE's augmentation, written once for the torch back end; uint8 batch -> model input for all.

Train: RandomResizedCrop(size, scale=(0.2, 1), ratio=(3/4, 4/3), bicubic) + horizontal flip; the
scale (the crop's area range as a share of the image) is ``make_loader``'s ``crop_scale``.
Eval: resize the shorter side to ``round(size * 256 / 224)``, centre-crop ``size``.

The crop box and flip of a sample come from a ``torch.Generator`` seeded by (seed, epoch, sample
index) only, never the global RNG or the worker id: a batch is bit-identical whatever
``num_workers`` and after a mid-epoch resume, and the trainer's own RNG stream is left alone.
The box sampling follows torchvision's ``RandomResizedCrop`` algorithm (10 tries, then the centre
crop clamped to the ratio range); the pixels are cropped and resized by
``torchvision.transforms.v2.functional`` (PIL bicubic with antialiasing on CPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from common.imagenet import IMAGENET_MEAN, IMAGENET_STD  # re-exported: pipeline.IMAGENET_MEAN / _STD

RRC_SCALE = (0.2, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def check_crop_scale(crop_scale) -> tuple[float, float]:
    """``crop_scale`` as a (min, max) float pair; ValueError unless 0 < min <= max <= 1."""
    try:
        lo, hi = (float(v) for v in crop_scale)
    except (TypeError, ValueError):  # not a pair of numbers
        lo = hi = math.nan
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop_scale must be a (min, max) crop area pair with 0 < min <= max <= 1, "
                         f"got {crop_scale!r}")
    return lo, hi


def eval_resize_size(image_size: int) -> int:
    """Shorter side before the eval centre crop: 256 for 224, scaled for other sizes."""
    return int(round(image_size * 256 / 224))


@dataclass(frozen=True)
class CropParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_rrc_params(height: int, width: int, gen: torch.Generator, scale=RRC_SCALE,
                      ratio=RRC_RATIO) -> CropParams:
    """A RandomResizedCrop box + flip decision drawn from ``gen`` (torchvision's algorithm)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            break
    else:  # fall back to the largest centred crop within the ratio range
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=gen) < 0.5)
    return CropParams(i, j, h, w, flip)


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def augment(img, image_size: int, train: bool, gen: torch.Generator | None,
            crop_scale=RRC_SCALE) -> torch.Tensor:
    """PIL RGB image or decoded uint8 3 x H x W tensor (any device) -> uint8 tensor 3 x size x size.

    train: RandomResizedCrop box (area share in ``crop_scale``) + flip drawn from ``gen``; eval: resize + centre crop. The same
    generator draws give the same box for both inputs (the batched nvJPEG path uses tensors); the
    pixels differ only by the resize kernel's implementation (tensor bicubic vs PIL's).
    """
    if train:
        height, width = F.get_size(img)
        p = sample_rrc_params(height, width, gen, scale=crop_scale)
        img = F.resized_crop(img, p.top, p.left, p.height, p.width, [image_size, image_size],
                             interpolation=InterpolationMode.BICUBIC, antialias=True)
        if p.flip:
            img = F.horizontal_flip(img)
    else:
        img = F.resize(img, [eval_resize_size(image_size)], interpolation=InterpolationMode.BICUBIC,
                       antialias=True)
        img = F.center_crop(img, [image_size, image_size])
    return F.pil_to_tensor(img) if isinstance(img, Image.Image) else img


def _norm_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean * 255 and 1 / (std * 255) as 1 x 3 x 1 x 1 float32 on ``device`` (cached per device)."""
    key = str(device)
    if key not in _NORM_CACHE:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255
        inv_std = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        _NORM_CACHE[key] = (mean.to(device), inv_std.to(device))
    return _NORM_CACHE[key]


_NORM_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def to_model_input(images: torch.Tensor, device=None, channels_last: bool = False,
                   dtype: torch.dtype = torch.float32, non_blocking: bool = True) -> torch.Tensor:
    """A loader's batch -> what the model takes: normalised ``dtype`` N x 3 x H x W on ``device``.

    Call it inside the training / eval step, on the consuming device: a uint8 batch crosses to the
    GPU as uint8 (4x fewer bytes, ``non_blocking`` from pinned or FFCV/DALI device memory), then
    one pass writes the float result in the wanted memory format and two in-place ops normalise
    it, ``(x - 255 mean) * 1 / (255 std)``: the formula the loaders used before, so the numbers
    are the same. A floating batch is taken as already normalised (moved and cast only), so the
    function is safe to call on either. The result never aliases the loader's buffers, which
    FFCV and DALI reuse for later batches.
    """
    device = images.device if device is None else torch.device(device)
    images = images.to(device, non_blocking=non_blocking and device.type == "cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if images.is_floating_point():
        return images.to(dtype).contiguous(memory_format=memory_format)
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_input: images must be uint8 or floating point, got {images.dtype}")
    mean, inv_std = _norm_constants(device)
    # float32 first whatever ``dtype``: bf16/fp16 normalised values then round once, at the end
    out = torch.empty(images.shape, dtype=torch.float32, device=device, memory_format=memory_format)
    out.copy_(images).sub_(mean).mul_(inv_std)
    return out if dtype == torch.float32 else out.to(dtype)


def finish_batch(images: torch.Tensor, labels: torch.Tensor, device, dtype: torch.dtype,
                 channels_last: bool, layout: str = "NCHW", normalized: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A back end's batch -> what the loader yields: ``(images, int64 labels)`` on ``device``.

    ``dtype=torch.uint8``: the images stay as the library produced them (moved to ``device`` if
    needed, no pass over the pixels, no layout change); the consumer calls
    :func:`to_model_input` in its step. A floating ``dtype``: :func:`to_model_input` here, for
    callers that want normalised batches straight from the loader.
    """
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    # a copy always: a back end's label batch may be a reused buffer (FFCV's is), and callers keep labels
    labels = labels.to(device=device, dtype=torch.int64, non_blocking=non_blocking, copy=True)
    if layout == "NHWC":
        images = images.permute(0, 3, 1, 2)  # a view: N x 3 x H x W in channels-last memory
    if dtype == torch.uint8:
        if normalized:
            raise ValueError("finish_batch: a normalised batch cannot be handed out as uint8")
        return images.to(device, non_blocking=non_blocking), labels
    return to_model_input(images, device, channels_last, dtype, non_blocking), labels
