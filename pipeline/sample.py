"""The built-in sample dataset: 10 classes told apart by shape and layout, not by colour.

Why synthetic: tests, the demo and CPU-scale experiments need labelled images that the project can
make itself, quickly and identically on every machine. Why these classes: MAE must learn *spatial*
structure to beat raw pixels under a linear probe, so each image draws one class's shape or
pattern at a random position, size and rotation, with random foreground and background colours
on a textured, noisy background. Mean colour and per-channel spread therefore carry almost no label
information (tests/test_sample.py checks that a linear classifier on them is near chance while
translation-invariant spatial features separate the classes).

Determinism: every image is drawn from its own ``numpy`` generator seeded by
``(seed, split, class, index)`` and saved with fixed JPEG settings, so the same seed gives
byte-identical files whatever the number of worker processes.

``python -m pipeline.sample --out DIR`` writes ``DIR/{train,val}/<class>/*.jpg`` and
``DIR/classes.tsv`` (index, folder, name). ``--imagenet-size`` writes ~500x375 photos-sized JPEGs
(about 110 KB each at quality 90) for loader benchmarks.
"""
from __future__ import annotations

import argparse
import math
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

CLASSES = ("disc", "ring", "square", "triangle", "star", "cross",
           "stripes_horizontal", "stripes_vertical", "checkerboard", "two_discs")
FOLDERS = tuple(f"{i}_{name}" for i, name in enumerate(CLASSES))   # sort in class order
SPLITS = {"train": 0, "val": 1}
IMAGENET_SIZE = (500, 375)   # (width, height) of a typical ImageNet photo
DEFAULT_TRAIN_PER_CLASS = 500   # the demo's kNN needs the bigger memory bank: 22.6% vs ~16% with 200
DEFAULT_VAL_PER_CLASS = 50


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

def _luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colours(rng: np.random.Generator):
    """Independent uniform fg/bg colours, resampled until their luminance differs by >= 60 so the
    shape stays visible; the sign of the difference is random (light-on-dark and dark-on-light)."""
    while True:
        bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(_luma(bg) - _luma(fg)) >= 60:
            return bg, fg


def _smooth_noise(rng, h, w, cells, amp):
    """Low-frequency colour noise: a random ``cells`` grid upsampled bilinearly (cloudy texture)."""
    grid = rng.normal(0, amp, (cells + 1, cells + 1, 3)).astype(np.float32)
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        out[..., c] = np.asarray(Image.fromarray(grid[..., c], "F").resize((w, h), Image.BILINEAR))
    return out


def _polygon(cx, cy, r, theta, n, inner=None):
    """Vertices of a regular ``n``-gon (or an ``n``-point star when ``inner`` ratio is given)."""
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        a = theta + 2 * math.pi * k / steps
        rr = r * (inner if inner and k % 2 else 1.0)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotated_rect(cx, cy, half_len, half_wid, theta):
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + dx * c - dy * s, cy + dx * s + dy * c)
            for dx, dy in ((-half_len, -half_wid), (half_len, -half_wid),
                           (half_len, half_wid), (-half_len, half_wid))]


def _pattern(W, H, cx, cy, r, theta, period, checker: bool) -> np.ndarray:
    """Stripes (or a checkerboard) at angle ``theta`` inside a disc window, as a 0/1 mask."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    x -= cx
    y -= cy
    u = (x * math.cos(theta) + y * math.sin(theta)) / period
    inside = x * x + y * y <= r * r
    band = (np.floor(u) % 2) == 0
    if checker:
        v = (-x * math.sin(theta) + y * math.cos(theta)) / period
        band = band ^ ((np.floor(v) % 2) == 0)
    return (inside & band).astype(np.float32)


def _mask(cls: int, rng: np.random.Generator, W: int, H: int) -> np.ndarray:
    """The class's shape as a float mask in [0, 1] of size H x W (drawn at this resolution)."""
    s = min(W, H)
    r = s * rng.uniform(0.17, 0.30)
    theta = rng.uniform(0, 2 * math.pi)
    name = CLASSES[cls]
    if name in ("stripes_horizontal", "stripes_vertical", "checkerboard"):
        rw = r * 1.25
        cx, cy = rng.uniform(rw, W - rw), rng.uniform(rw, H - rw)
        if name == "checkerboard":
            ang, period = theta, rw * rng.uniform(0.28, 0.4)
        else:  # stripes: orientation within 20 degrees of horizontal / vertical bands
            base = math.pi / 2 if name == "stripes_horizontal" else 0.0
            ang, period = base + rng.uniform(-0.35, 0.35), rw * rng.uniform(0.25, 0.4)
        return _pattern(W, H, cx, cy, rw, ang, period, name == "checkerboard")

    canvas = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(canvas)
    if name == "two_discs":
        rr = r * 0.62
        lo, hi = (rr, rr), (W - rr, H - rr)
        while True:  # two non-touching discs
            p, q = rng.uniform(lo, hi), rng.uniform(lo, hi)
            if math.hypot(p[0] - q[0], p[1] - q[1]) > 2.4 * rr:
                break
        for cx, cy in (p, q):
            d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=255)
        return np.asarray(canvas, np.float32) / 255.0
    scale = {"disc": 1.0, "ring": 1.2, "square": 0.95, "triangle": 1.25, "star": 1.3,
             "cross": 1.2}[name]
    r *= scale
    cx, cy = rng.uniform(r, W - r), rng.uniform(r, H - r)
    if name == "disc":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif name == "ring":
        ri = r * rng.uniform(0.5, 0.68)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif name == "square":
        d.polygon(_polygon(cx, cy, r, theta, 4), fill=255)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy, r, theta, 3), fill=255)
    elif name == "star":
        d.polygon(_polygon(cx, cy, r, theta, 5, inner=0.42), fill=255)
    elif name == "cross":
        w = r * rng.uniform(0.25, 0.35)
        d.polygon(_rotated_rect(cx, cy, r, w, theta), fill=255)
        d.polygon(_rotated_rect(cx, cy, r, w, theta + math.pi / 2), fill=255)
    return np.asarray(canvas, np.float32) / 255.0


def render(cls: int, rng: np.random.Generator, size=(64, 64), supersample: int | None = None,
           grain: float | None = None) -> np.ndarray:
    """One image of class ``cls`` as ``H x W x 3`` uint8; ``size`` is (width, height).

    Small images are drawn ``supersample`` times larger and box-downsampled (anti-aliased edges);
    ``grain`` is the per-pixel noise std (defaults scale with size so that ImageNet-sized files
    weigh about what a photo does as JPEG).
    """
    W, H = size
    ss = supersample or (1 if min(W, H) >= 192 else 2)
    m = _mask(cls, rng, W * ss, H * ss)
    if ss > 1:
        m = m.reshape(H, ss, W, ss).mean(axis=(1, 3))
    bg, fg = _colours(rng)
    big = min(W, H) >= 192
    grain = grain if grain is not None else (28.0 if big else 8.0)
    back = bg + _smooth_noise(rng, H, W, int(rng.integers(3, 7)), 28.0)
    # fine background texture (a second, denser noise field) hides the shape's edges from colour
    back += _smooth_noise(rng, H, W, int(rng.integers(12, 24)), 12.0)
    front = fg + _smooth_noise(rng, H, W, int(rng.integers(3, 7)), 14.0)
    img = back * (1.0 - m[..., None]) + front * m[..., None]
    img += rng.normal(0.0, grain, (H, W, 3)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _job(args):
    path, cls, seed_key, size, quality = args
    rng = np.random.default_rng(np.random.SeedSequence(seed_key))
    Image.fromarray(render(cls, rng, size)).save(path, "JPEG", quality=quality,
                                                 optimize=False, progressive=False)
    return os.path.getsize(path)


def make_sample_dataset(out, image_size=64, train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                        val_per_class: int = DEFAULT_VAL_PER_CLASS, seed: int = 0,
                        imagenet_size: bool = False, quality: int = 90, num_workers: int | None = None,
                        progress: bool = True) -> Path:
    """Write the sample dataset to ``out`` and return ``out`` as a Path.

    ``image_size``: side of the square images (ignored with ``imagenet_size``, which writes
    500 x 375 images). Same arguments -> byte-identical files. Existing files of the same name are
    overwritten; nothing else in ``out`` is touched.
    """
    out = Path(out)
    size = IMAGENET_SIZE if imagenet_size else (int(image_size), int(image_size))
    if min(size) < 16:
        raise ValueError(f"image_size must be >= 16 (got {image_size})")
    jobs = []
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, folder in enumerate(FOLDERS):
            d = out / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(int(n)):
                key = [int(seed), SPLITS[split], c, i]
                jobs.append((str(d / f"{CLASSES[c]}_{i:05d}.jpg"), c, key, size, int(quality)))
    with open(out / "classes.tsv", "w") as f:
        f.write("index\tfolder\tname\n")
        for c, folder in enumerate(FOLDERS):
            f.write(f"{c}\t{folder}\t{CLASSES[c].replace('_', ' ')}\n")
    workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(jobs), desc=f"sample -> {out}", unit="img", disable=not progress)
    total = 0
    if workers > 1 and len(jobs) > 200:
        with Pool(workers) as pool:
            for nbytes in pool.imap_unordered(_job, jobs, chunksize=32):
                total += nbytes
                bar.update()
    else:
        for j in jobs:
            total += _job(j)
            bar.update()
    bar.close()
    if progress and jobs:
        print(f"wrote {len(jobs)} images ({size[0]}x{size[1]}), mean {total / len(jobs) / 1024:.1f} KiB, "
              f"to {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.sample",
        description="Write the built-in sample dataset: 10 classes of shapes, stripes, checkerboards "
                    "and layouts on random colours and textured backgrounds (colour statistics carry "
                    "no label), as DIR/{train,val}/<class>/*.jpg plus DIR/classes.tsv. "
                    "Deterministic: the same --seed gives byte-identical files.")
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--image-size", type=int, default=64, help="side of the square images (default 64)")
    ap.add_argument("--train-per-class", type=int, default=DEFAULT_TRAIN_PER_CLASS,
                    help=f"training images per class (default {DEFAULT_TRAIN_PER_CLASS})")
    ap.add_argument("--val-per-class", type=int, default=DEFAULT_VAL_PER_CLASS,
                    help=f"validation images per class (default {DEFAULT_VAL_PER_CLASS})")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    ap.add_argument("--imagenet-size", action="store_true",
                    help="write 500x375 JPEGs of about 110 KB (ImageNet-like) for loader benchmarks")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    ap.add_argument("--num-workers", type=int, default=None, help="processes (default: CPU count)")
    a = ap.parse_args(argv)
    make_sample_dataset(a.out, a.image_size, a.train_per_class, a.val_per_class, a.seed,
                        a.imagenet_size, a.quality, a.num_workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
