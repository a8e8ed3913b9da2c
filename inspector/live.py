"""Live re-masking: load a run's checkpoint, mask an image now (CPU), show the four panels.

Why its own module: it is the only part of the inspector that runs a model, so it owns the guards
that keep the app responsive and safe: a parameter-count limit checked *before* building the model
(a ViT-H would take seconds per image and gigabytes of memory on a laptop), size and pixel limits on
uploads checked before decoding (decompression bombs), and a small cache so moving a slider does
not reload the checkpoint. Checkpoints are untrusted files: their `.sha256` (written by the trainer)
is checked first, and they are read only by `model.checkpoint.safe_torch_load` (weights only, never
full unpickling), so a crafted pickle cannot run code inside the inspector.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import functional as TF

from common.files import recorded_sha256, sha256_file, sha256_sidecar
from common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from model import SAMPLERS, load_checkpoint
from model.checkpoint import safe_torch_load
from model.visualize import reconstruction_panels

from .limits import DEFAULT_MAX_PARAMS, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES


class LiveError(ValueError):
    """A problem the user can fix (bad upload, model too large, bad setting): shown as a message."""


# ---------------------------------------------------------------------------------------- images
def load_image(source, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB PIL image from an uploaded file path or an array, or LiveError saying what is wrong."""
    if source is None:
        raise LiveError("No image: upload one or pick a sampled image.")
    if isinstance(source, np.ndarray):
        a = source
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise LiveError(f"expected an H x W x 3 image array, got shape {a.shape}")
        if a.shape[0] * a.shape[1] > max_pixels:
            raise LiveError(f"image is too large: {a.shape[1]} x {a.shape[0]} = {a.shape[0] * a.shape[1]:,} "
                            f"pixels; the limit is {max_pixels:,} pixels")
        return Image.fromarray(a[..., :3].astype(np.uint8))
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", source))
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LiveError(f"cannot read the upload {name}: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise LiveError(f"{name} is {size / 2**20:.1f} MiB; uploads are limited to "
                        f"{max_bytes / 2**20:.0f} MiB. Resize it first.")
    if size == 0:
        raise LiveError(f"{name} is empty.")
    try:
        with Image.open(path) as im:
            w, h = im.size  # read from the header, before any pixel is decoded
            if w * h > max_pixels:
                raise _too_large(name, f"{w} x {h} = {w * h:,} pixels", max_pixels)
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except LiveError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses headers over 2x its own limit inside Image.open, before we see the size;
        # its message carries the pixel count ("Image size (400000000 pixels) exceeds ...")
        m = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(name, f"{int(m.group(1)):,} pixels" if m else "over Pillow's limit", max_pixels) from None
    except UnidentifiedImageError:
        raise LiveError(f"{name} is not an image Pillow can read (JPEG, PNG, WebP, ...).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise LiveError(f"{name} could not be decoded as an image: {exc}") from None


def _too_large(name: str, size: str, max_pixels: int) -> LiveError:
    return LiveError(f"{name} is too large: {size}; the limit is {max_pixels:,} pixels. Resize it first.")


def preprocess(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic), centre-crop, normalise -> 1 x 3 x size x size."""
    img = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [size, size])
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD).unsqueeze(0)


# ---------------------------------------------------------------------------------------- models
def verify_checksum(path: Path) -> None:
    """LiveError unless `path` matches the `NAME.sha256` beside it ("<hex digest>  NAME", as
    trainer/checkpoint.py writes it). No sidecar: nothing to check (official downloads have none;
    the safe reader still guards them)."""
    side = sha256_sidecar(path)
    try:
        recorded = recorded_sha256(path)
    except OSError as exc:
        raise LiveError(f"checkpoint {path.name}: its checksum file {side.name} cannot be read "
                        f"({exc.strerror or exc}); not loaded") from None
    except ValueError:
        raise LiveError(f"checkpoint {path.name}: {side.name} holds no SHA-256 digest; not loaded") from None
    if recorded is None:
        return
    actual = sha256_file(path)
    if actual != recorded:
        raise LiveError(f"checkpoint {path.name} does not match its checksum ({side.name} records "
                        f"{recorded[:12]}..., the file hashes to {actual[:12]}...): corrupt or replaced; "
                        f"not loaded")


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents after its checksum verifies, via the project's one safe reader."""
    verify_checksum(path)
    try:  # mmap: counting parameters of a huge checkpoint must not read it all into memory
        return safe_torch_load(path, map_location="cpu", mmap=True)
    except (ValueError, OSError) as exc:  # UnsafeCheckpointError is a ValueError: names file and global
        raise LiveError(str(exc)) from None


def _state_dict(ckpt) -> dict:
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
    return ckpt if isinstance(ckpt, dict) else {}


def count_params(state_dict: dict) -> int:
    return int(sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor)))


class ModelCache:
    """Checkpoint path -> loaded model in eval mode, least recently used first out.

    The key includes the file's mtime and size so a checkpoint overwritten by a running trainer is
    reloaded. Models over `max_params` are refused with a LiveError before they are built.
    """

    def __init__(self, max_params: int = DEFAULT_MAX_PARAMS, capacity: int = 2):
        self.max_params = int(max_params)
        self.capacity = capacity
        self._models: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was actually read (tests check the cache)

    def get(self, path: str | os.PathLike):
        path = Path(path)
        try:
            st = path.stat()
        except OSError as exc:
            raise LiveError(f"checkpoint {path.name} cannot be read: {exc.strerror or exc}") from None
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            ckpt = _read_checkpoint(path)
            n = count_params(_state_dict(ckpt))
            if n > self.max_params:
                raise LiveError(
                    f"{path.name} holds a model with {n / 1e6:.0f}M parameters; live masking on CPU is "
                    f"limited to {self.max_params / 1e6:.0f}M so it stays interactive. Start the inspector "
                    f"with --live-max-params {int(n * 1.01)} to allow it anyway.")
            try:
                model = load_checkpoint(ckpt, map_location="cpu").eval()
            except (ValueError, KeyError, TypeError) as exc:
                msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
                raise LiveError(f"checkpoint {path.name}: {msg.removeprefix('<checkpoint dict>: ')}") from None
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model


# ---------------------------------------------------------------------------------------- masking
@dataclass
class LiveResult:
    panels: dict          # original, masked, reconstruction, pasted: H x W x 3 uint8
    loss: float           # MSE on the masked patches of this image
    visible: int          # patches the encoder saw
    total: int            # patches in the image
    seconds: float

    def caption(self) -> str:
        return (f"loss {self.loss:.4f} on masked patches · encoder saw {self.visible}/{self.total} patches "
                f"· {self.seconds * 1000:.0f} ms on CPU")


def mask_image(model, image: torch.Tensor, mask_ratio: float, sampler: str = "random",
               seed: int = 0) -> LiveResult:
    """Mask one normalised image (1 x 3 x H x W) with `sampler` at `mask_ratio`, reconstruct it now."""
    if sampler not in SAMPLERS:
        raise LiveError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 0.0 < float(mask_ratio) < 1.0:
        raise LiveError(f"mask ratio must be between 0 and 1 (exclusive), got {mask_ratio}")
    L = int(model.num_patches)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(image.shape[0], L, generator=gen)
    t0 = time.perf_counter()
    with torch.inference_mode():
        # the sampler is an argument of this call: the model shared by every browser session is
        # never changed, so concurrent requests need no lock and no copy of it
        loss, pred, mask = model(image, mask_ratio=float(mask_ratio), noise=noise, sampler=sampler)
    panels = reconstruction_panels(model, image, pred, mask, IMAGENET_MEAN, IMAGENET_STD)
    seconds = time.perf_counter() - t0
    panels = {k: np.asarray(v)[0] for k, v in panels.items()}
    visible = int((mask[0] == 0).sum())
    return LiveResult(panels=panels, loss=float(loss), visible=visible, total=L, seconds=seconds)


def model_image_size(model) -> int:
    size = model.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
