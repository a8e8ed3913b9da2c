"""The three loader back ends on real files (CPU): shapes, labels, agreement, crops, round trips.

FFCV loaders JIT-compile their pipeline on the first iteration (seconds each), so the FFCV loaders
are built once per module and shared between tests (``ffcv_loader`` cache).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import IMAGENET_MEAN, IMAGENET_STD, make_loader
from pipeline.loaders import base
from pipeline.loaders.files import list_images
from pipeline.shared_data import imagenette_dir

IMAGENETTE = imagenette_dir()
BACKENDS = ("torch", "dali", "ffcv")
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def to_uint8_scale(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: back to 0..255 floats, N x 3 x H x W."""
    return (x.float().cpu() * STD + MEAN) * 255


def build_beton(src: Path, out: Path, **options) -> Path:
    """Convert with the project's converter (pipeline.build_ffcv) when present, else FFCV directly."""
    try:
        from pipeline.build_ffcv import build
    except ImportError:  # local fallback for when the converter is not there yet
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

        for split in ("train", "val"):
            if not (src / split).is_dir():
                continue
            s = list_images(src / split)
            items = [(np.asarray(Image.open(p).convert("RGB")), l) for p, l in zip(s.paths, s.labels)]
            out.mkdir(parents=True, exist_ok=True)
            DatasetWriter(str(out / f"{split}.beton"), {
                "image": RGBImageField(write_mode="jpg", jpeg_quality=90, max_resolution=256),
                "label": IntField()}, num_workers=1).from_indexed_dataset(items)
        return out
    build(src, out, num_workers=1, progress=False, log=lambda *a, **k: None, **options)
    return out


# ------------------------------------------------------------------------------------------------
# Data: the sample dataset, a coordinate-encoding image, a small real subset of Imagenette
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader_sample")
    try:
        from pipeline.sample import make_sample_dataset
        make_sample_dataset(root / "src", image_size=64, train_per_class=6, val_per_class=3,
                            num_workers=1, progress=False)
    except ImportError:  # local fallback: random 64 px JPEGs in the same layout
        rng = np.random.default_rng(0)
        for split, n in (("train", 6), ("val", 3)):
            for c in range(10):
                d = root / "src" / split / f"{c}_c"
                d.mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(d / f"{i}.jpg")
    build_beton(root / "src", root / "ffcv")
    return root


COORD_W, COORD_H = 320, 240


@pytest.fixture(scope="module")
def coords(tmp_path_factory):
    """32 copies of one 320x240 image whose red encodes x and green encodes y (JPEG 4:4:4, q95)."""
    root = tmp_path_factory.mktemp("loader_coords")
    x = np.linspace(0, 255, COORD_W)[None, :].repeat(COORD_H, 0)
    y = np.linspace(0, 255, COORD_H)[:, None].repeat(COORD_W, 1)
    img = np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)
    for split, n in (("train", 16), ("val", 4)):
        for c in ("a", "b"):
            d = root / "src" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(img).save(d / f"{i:02d}.jpg", quality=95, subsampling=0)
    build_beton(root / "src", root / "ffcv", max_resolution=None, jpeg_quality=95)
    return root


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory):
    """4 real photos per class (224x224), linked in place (never copied), and their beton."""
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"{IMAGENETTE} not present")
    root = tmp_path_factory.mktemp("loader_imagenette")
    for cls in sorted(os.listdir(IMAGENETTE / "train")):
        d = root / "src" / "val" / cls
        d.mkdir(parents=True)
        for f in sorted(os.listdir(IMAGENETTE / "train" / cls))[:4]:
            os.symlink(IMAGENETTE / "train" / cls / f, d / f)
    build_beton(root / "src", root / "ffcv")
    return root


_FFCV_CACHE: dict = {}


def ffcv_loader(beton: Path, **kw):
    """One FFCV Loader per (file, settings) for the whole module: each costs a numba compile."""
    key = (str(beton), tuple(sorted(kw.items())))
    if key not in _FFCV_CACHE:
        _FFCV_CACHE[key] = make_loader("ffcv", beton, num_workers=1, **kw)
    return _FFCV_CACHE[key]


def loader_for(backend, root: Path, split: str, **kw):
    if backend == "ffcv":
        return ffcv_loader(root / "ffcv" / f"{split}.beton", **kw)
    return make_loader(backend, root / "src" / split, num_workers=1, **kw)


def epoch(loader, e=0, start_batch=0):
    loader.set_epoch(e, start_batch)
    return [(x.clone(), y.clone()) for x, y in loader]


# ------------------------------------------------------------------------------------------------
# Shapes, dtype, range, labels, order
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_have_right_shape_dtype_range_labels_and_shared_order(backend, sample):
    loader = loader_for(backend, sample, "train", batch_size=16, image_size=32, train=True, seed=4)
    assert loader.num_samples == 60 and len(loader) == 3
    assert loader.num_classes == 10 and loader.classes == sorted(loader.classes)
    truth = list_images(sample / "src" / "train").labels
    batches = epoch(loader, 1)
    assert len(batches) == 3
    order = base.epoch_order(60, seed=4, epoch=1, shuffle=True, batch_size=16, drop_last=True)
    for b, (x, y) in enumerate(batches):
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.dtype == torch.int64 and y.shape == (16,)
        assert y.tolist() == [truth[i] for i in order[b * 16:(b + 1) * 16]]
        px = to_uint8_scale(x)
        assert px.min() > -1.0 and px.max() < 256.0 and px.std() > 10
    # resume: the tail of the same epoch, in the same order (labels; FFCV/DALI crops are fresh draws)
    tail = epoch(loader, 1, start_batch=2)
    assert len(tail) == 1 and torch.equal(tail[0][1], batches[2][1])
    assert [y.tolist() for _, y in epoch(loader, 1)] == [y.tolist() for _, y in batches]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_stay_valid_after_later_batches(backend, dtype, sample):
    # A consumer that keeps the label tensors (feature extraction appends them, then concatenates)
    # must get labels it owns: FFCV reuses its label buffer every few batches, and an int64 label
    # batch passed through `.to(torch.int64)` is the same tensor. On 8,469 Imagenette photos that
    # turned the cached probe and kNN into chance (10.7% / 10.6% vs 36.3% on the torch back end).
    loader = loader_for(backend, sample, "train", batch_size=4, image_size=32, train=False, seed=0,
                        shuffle=False, drop_last=False, dtype=dtype)
    loader.set_epoch(0)
    kept = [y for _, y in loader]   # no copy: what a careless consumer holds on to
    assert len(kept) == 15
    truth = list_images(sample / "src" / "train").labels
    assert torch.cat(kept).tolist() == truth


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_dtype_and_channels_last_options(backend, sample):
    loader = loader_for(backend, sample, "val", batch_size=8, image_size=32, train=False,
                        dtype=torch.bfloat16, channels_last=True)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.shape == (8, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref, _ = next(iter(loader_for(backend, sample, "val", batch_size=8, image_size=32, train=False)))
    assert (x.float() - ref).abs().max() < 0.05  # bf16 rounding of values within about +-2.7


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_sharding_covers_split_once(backend, sample):
    seen = []
    for rank in range(2):
        loader = loader_for(backend, sample, "val", batch_size=8, image_size=32, train=False,
                            rank=rank, world_size=2, shuffle=True, seed=9)
        labels = torch.cat([y for _, y in epoch(loader, 3)])
        order = base.epoch_order(30, seed=9, epoch=3, shuffle=True, rank=rank, world_size=2,
                                 batch_size=8, drop_last=False)
        assert labels.tolist() == [list_images(sample / "src" / "val").labels[i] for i in order]
        seen += order.tolist()
    assert sorted(seen) == list(range(30))


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_grayscale_jpeg_comes_out_rgb(backend, tmp_path):
    d = tmp_path / "g" / "only"
    d.mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(48, dtype=np.uint8)[None] * 5, (48, 1)), "L").save(d / "g.jpg")
    x, y = next(iter(make_loader(backend, tmp_path / "g", batch_size=1, image_size=32, train=False,
                                 num_workers=1)))
    px = to_uint8_scale(x)[0]
    assert px.shape == (3, 32, 32)
    assert (px[0] - px[1]).abs().max() < 2 and (px[1] - px[2]).abs().max() < 2


# ------------------------------------------------------------------------------------------------
# The three back ends agree, and read what was written
# ------------------------------------------------------------------------------------------------

def channel_stats(loader):
    px = torch.cat([to_uint8_scale(x) for x, _ in epoch(loader)]) / 255
    return px.mean((0, 2, 3)), px.std((0, 2, 3))


@pytest.mark.parametrize("train", [False, True])
def test_backends_agree_on_channel_statistics(imagenette, train):
    stats = {b: channel_stats(loader_for(b, imagenette, "val", batch_size=20, image_size=112,
                                         train=train, shuffle=False, drop_last=False))
             for b in BACKENDS}
    mean_t, std_t = stats["torch"]
    tol = 0.03 if train else 0.01  # random crops differ between back ends; centre crops do not
    for b in ("dali", "ffcv"):
        mean_b, std_b = stats[b]
        assert (mean_b - mean_t).abs().max() < tol, (b, mean_b, mean_t)
        assert (std_b - std_t).abs().max() < tol, (b, std_b, std_t)


def pil_reference(paths, size):
    """Eval crops made directly with PIL: shorter side -> round(size*256/224), centre crop."""
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        r = round(size * 256 / 224) / min(im.size)
        if r != 1:
            im = im.resize((round(im.width * r), round(im.height * r)), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        out.append(torch.from_numpy(np.array(im.crop((left, top, left + size, top + size)))))
    return torch.stack(out).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("data,size", [("sample", 56), ("imagenette", 196)])
def test_beton_round_trips_labels_and_pixels(data, size, request):
    """FFCV eval batches == the source files decoded by PIL, within JPEG re-encoding tolerance.

    ``size`` is chosen so the eval resize is the identity (64 -> 64, 224 -> 224): what is left is
    the converter's JPEG q90 re-encoding.
    """
    root = request.getfixturevalue(data)
    src = list_images(root / "src" / "val")
    loader = ffcv_loader(root / "ffcv" / "val.beton", batch_size=16, image_size=size, train=False)
    assert loader.num_samples == len(src.paths)
    assert loader.classes == src.classes
    xs, ys = zip(*epoch(loader))
    got = to_uint8_scale(torch.cat(xs))
    assert torch.cat(ys).tolist() == src.labels
    want = pil_reference(src.paths, size)
    err = (got - want).abs().mean((1, 2, 3))
    assert err.max() < 4.0, err.max()          # JPEG q90 re-encoding: a few levels
    shuffled = (got - want.roll(1, 0)).abs().mean((1, 2, 3))
    assert shuffled.min() > err.max()          # and each image matches its own source best


# ------------------------------------------------------------------------------------------------
# RandomResizedCrop honours scale and ratio: decode the crop box from coordinate-encoding pixels
# ------------------------------------------------------------------------------------------------

def crop_boxes(x: torch.Tensor):
    """(area fraction, aspect ratio w/h in pixels, flipped) for each coordinate-encoded output."""
    px = to_uint8_scale(x) / 255
    s = x.shape[-1]
    out = []
    for r, g in zip(px[:, 0], px[:, 1]):
        x0, x1 = r[:, 0].mean().item(), r[:, -1].mean().item()
        y0, y1 = g[0].mean().item(), g[-1].mean().item()
        flipped = x1 < x0
        wf = abs(x1 - x0) * s / (s - 1)   # edge pixel centres sit half an output pixel inside
        hf = (y1 - y0) * s / (s - 1)
        out.append((wf * hf, (wf * COORD_W) / (hf * COORD_H), flipped))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_resized_crop_scale_ratio_and_flip(backend, coords):
    loader = loader_for(backend, coords, "train", batch_size=32, image_size=48, train=True, seed=1)
    boxes = crop_boxes(torch.cat([x for x, _ in epoch(loader)]))
    assert len(boxes) == 32
    areas = [a for a, _, _ in boxes]
    ratios = [r for _, r, _ in boxes]
    flips = sum(f for _, _, f in boxes)
    assert min(areas) > 0.2 * 0.9 and max(areas) < 1.0 * 1.04, areas
    assert min(ratios) > 0.75 * 0.93 and max(ratios) < (4 / 3) * 1.07, ratios
    assert min(areas) < 0.5 and max(areas) > 0.6      # the range is used, not one fixed crop
    assert 4 <= flips <= 28


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_is_the_centre_crop(backend, coords):
    loader = loader_for(backend, coords, "val", batch_size=8, image_size=56, train=False)
    for area, ratio, flipped in crop_boxes(torch.cat([x for x, _ in epoch(loader)])):
        side = COORD_H * 224 / 256     # shorter side resized to 64 then 56 cut: 7/8 of it
        assert not flipped
        assert math.isclose(area, side * side / (COORD_W * COORD_H), rel_tol=0.05)
        assert math.isclose(ratio, 1.0, rel_tol=0.05)


# ------------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------------

def test_errors_name_the_problem(sample, tmp_path):
    with pytest.raises(ValueError, match="unknown loader backend"):
        make_loader("tf", sample / "src" / "train")
    with pytest.raises(FileNotFoundError, match="nope"):
        make_loader("torch", tmp_path / "nope")
    with pytest.raises(ValueError, match="dataset root"):
        make_loader("torch", sample / "src")
    bad = tmp_path / "bad.beton"
    bad.write_bytes(b"not a beton" * 100)
    with pytest.raises(ValueError, match="bad.beton"):
        make_loader("ffcv", bad)
    with pytest.raises(ValueError, match="QUASI_RANDOM"):
        make_loader("ffcv", sample / "ffcv" / "train.beton", order="quasi_random", world_size=2, rank=1)
    with pytest.raises(ValueError, match="mixed"):
        make_loader("dali", sample / "src" / "train", decoder="mixed", device="cpu")


# ------------------------------------------------------------------------------------------------
# crop_scale: the RandomResizedCrop area range as an option
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_scale_sets_the_smallest_train_crop(backend, coords):
    kw = dict(batch_size=32, image_size=48, train=True, seed=1)
    large = crop_boxes(torch.cat([x for x, _ in epoch(loader_for(backend, coords, "train", crop_scale=(0.6, 1.0),
                                                                 **kw))]))
    default = crop_boxes(torch.cat([x for x, _ in epoch(loader_for(backend, coords, "train", **kw))]))
    areas = [a for a, _, _ in large]
    assert len(areas) == 32
    assert min(areas) > 0.6 * 0.9 and max(areas) < 1.0 * 1.04, areas   # tolerance of the default's test
    assert max(areas) > 0.8                                           # the range is used
    assert min(a for a, _, _ in default) < 0.5                        # default (0.2, 1.0) unchanged


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("crop_scale", [(0.0, 1.0), (0.5, 0.4), (0.2, 1.5), (0.3,), 0.3])
def test_bad_crop_scale_is_a_clear_error(backend, crop_scale, coords):
    path = coords / "ffcv" / "train.beton" if backend == "ffcv" else coords / "src" / "train"
    with pytest.raises(ValueError, match=r"crop_scale .*0 < min <= max <= 1"):
        make_loader(backend, path, crop_scale=crop_scale)
