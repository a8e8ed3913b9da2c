"""One scanner, one decoder: build_ffcv and the three loaders (ffcv, dali on CPU, torch) agree on a
messy folder: the same classes, the same files per class, the same label per file, and eval-mode
centre crops that differ only by resampling noise (issue 12)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import IMAGENET_MEAN, IMAGENET_STD, make_loader
from pipeline.loaders.files import list_images
from pipeline.sources import SourceError, decode_hazard, scan_source

pytestmark = pytest.mark.timeout(240)
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
SIZE = 32


def _smooth(rng, w=64, h=48):
    small = Image.fromarray(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8))  # gentle gradients
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def make_messy_split(root: Path, elsewhere: Path, seed=0) -> dict:
    """A train folder with every rule the scanner decides; returns {class: sorted relative files}."""
    rng = np.random.default_rng(seed)
    bird, cat, empty = root / "bird", root / "cat", root / "empty"
    for d in (bird / "sub", cat, empty, root / "__MACOSX" / "bird", root / "@eaDir" / "x",
              root / ".Trash-1000", bird / ".git", elsewhere / "dogs"):
        d.mkdir(parents=True, exist_ok=True)
    save = lambda arr, p, **kw: Image.fromarray(arr).save(p, **kw)  # noqa: E731
    save(_smooth(rng), bird / "a.JPG", quality=95)
    save(_smooth(rng), bird / "b.jpeg", quality=95)
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = _smooth(rng)
    rgba[:, :32, :3] = (0, 255, 0)         # hidden green under the transparent half
    rgba[:, 32:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(bird / "alpha.PNG")
    pal = Image.new("P", (64, 48), 0)
    pal.putpalette([0, 255, 0, 200, 30, 30] + [0] * 762)
    pal.paste(1, (0, 0, 40, 48))
    pal.save(bird / "palette_transparent.gif", transparency=0)
    save(_smooth(rng), bird / "sub" / "nested.jpg", quality=95)
    (bird / "._a.JPG").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (bird / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (bird / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (bird / "notes.txt").write_text("not an image\n")
    save(_smooth(rng), bird / ".git" / "hidden.jpg")
    Image.fromarray(_smooth(rng)).convert("CMYK").save(cat / "cmyk.jpg", quality=95)
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)).save(cat / "g16.png")
    ex = Image.Image().getexif()
    ex[0x0112] = 6
    save(_smooth(rng, 48, 64), cat / "exif6.jpg", quality=95, exif=ex.tobytes())
    save(_smooth(rng)[..., 1], cat / "gray.jpg", quality=95)
    Image.fromarray(_smooth(rng)).convert("P", palette=Image.ADAPTIVE).save(cat / "palette.png")
    save(_smooth(rng), cat / "f.JPEG", quality=95)
    os.symlink(bird / "b.jpeg", cat / "link.jpg")                  # a linked file is followed
    (empty / ".DS_Store").write_bytes(b"\0")                        # an empty class stays a class
    save(_smooth(rng), root / "__MACOSX" / "bird" / "._junk.jpg")
    save(_smooth(rng), root / "@eaDir" / "x" / "thumb.jpg")
    save(_smooth(rng), root / ".Trash-1000" / "t.jpg")
    for n in ("d1.jpg", "d2.jpg"):
        save(_smooth(rng), elsewhere / "dogs" / n, quality=95)
    os.symlink(elsewhere / "dogs", root / "dog")                     # a linked class folder too
    os.symlink(root / "dog", elsewhere / "dogs" / "loop")            # ...that loops back
    return {
        "bird": ["a.JPG", "alpha.PNG", "b.jpeg", "palette_transparent.gif", "sub/nested.jpg"],
        "cat": ["cmyk.jpg", "exif6.jpg", "f.JPEG", "g16.png", "gray.jpg", "link.jpg", "palette.png"],
        "dog": ["d1.jpg", "d2.jpg"],
        "empty": [],
    }


@pytest.fixture(autouse=True)
def _decode_cache(tmp_path, monkeypatch):
    """Keep the loaders' decode cache (open_rgb copies, hazard lists) inside the test's folder."""
    monkeypatch.setenv("MAEPIPE_DECODE_CACHE", str(tmp_path / "decode-cache"))


def _by_class(root, paths, labels, classes):
    out = {c: [] for c in classes}
    for p, lab in zip(paths, labels):
        out[classes[lab]].append(os.path.relpath(p, root / classes[lab]))
    return {c: sorted(v) for c, v in out.items()}


def _eval_batches(loader):
    images, labels = [], []
    for x, y in loader:
        images.append(((x.float().cpu() * STD + MEAN) * 255).clamp(0, 255))
        labels.append(y.cpu())
    return torch.cat(images), torch.cat(labels)


def test_scanner_rules(tmp_path):
    expected = make_messy_split(tmp_path / "train", tmp_path / "elsewhere")
    s = scan_source(tmp_path / "train")
    assert s.classes == ["bird", "cat", "dog", "empty"]
    split = s.splits["train"]
    got = {c: sorted(os.path.relpath(p, tmp_path / "train" / c) for p, k in split.files if k == c)
           for c in s.classes}
    assert got == expected
    assert split.empty_classes == ["empty"]
    reasons = {os.path.relpath(p, tmp_path / "train"): r for p, r in split.skipped}
    assert "system folder" in reasons["__MACOSX"] and "system folder" in reasons["@eaDir"]
    assert "hidden" in reasons[".Trash-1000"] and "resource fork" in reasons["bird/._a.JPG"]
    assert "system file" in reasons["bird/Thumbs.db"] and "not an image" in reasons["bird/notes.txt"]
    assert any("loop" in r for r in reasons.values()), reasons


def test_decode_hazards_are_found(tmp_path):
    make_messy_split(tmp_path / "train", tmp_path / "elsewhere")
    t = tmp_path / "train"
    hazards = {p: decode_hazard(t / p) for p in (
        "bird/a.JPG", "bird/alpha.PNG", "bird/palette_transparent.gif", "cat/cmyk.jpg",
        "cat/g16.png", "cat/exif6.jpg", "cat/gray.jpg", "cat/palette.png")}
    assert hazards["bird/a.JPG"] is None and hazards["cat/gray.jpg"] is None
    for p in ("bird/alpha.PNG", "bird/palette_transparent.gif", "cat/cmyk.jpg", "cat/g16.png",
              "cat/exif6.jpg", "cat/palette.png"):
        assert hazards[p], p


def test_messy_folder_agrees_across_build_ffcv_and_every_loader(tmp_path):
    from pipeline.build_ffcv import build

    src = tmp_path / "data"
    expected = make_messy_split(src / "train", tmp_path / "elsewhere")
    out = tmp_path / "ffcv"
    res = build(src, out, num_workers=1, progress=False, log=lambda *_: None)
    with open(out / "report.csv", newline="") as f:
        written = [r for r in csv.DictReader(f) if r["status"] in ("converted", "fixed")]
    classes = ["bird", "cat", "dog", "empty"]
    assert res["classes"] == 4
    beton_paths = [r["path"] for r in written]
    beton_labels = [classes.index(r["class"]) for r in written]
    assert _by_class(src / "train", beton_paths, beton_labels, classes) == expected

    crops, truth = {}, None
    for backend in ("ffcv", "dali", "torch"):
        path = out / "train.beton" if backend == "ffcv" else src / "train"
        loader = make_loader(backend, path, batch_size=64, image_size=SIZE, train=False,
                             num_workers=1, device="cpu")
        assert loader.classes == classes, backend
        images, labels = _eval_batches(loader)
        files = beton_paths if backend == "ffcv" else [str(p) for p in loader.paths]
        assert _by_class(src / "train", files, labels.tolist(), classes) == expected, backend
        crops[backend] = dict(zip(files, images))
        if truth is None:
            truth = dict(zip(files, labels.tolist()))
        assert dict(zip(files, labels.tolist())) == truth, backend
    for f in crops["torch"]:
        for backend in ("ffcv", "dali"):
            diff = (crops[backend][f] - crops["torch"][f]).abs().mean().item()
            # a dropped alpha channel or an unrotated EXIF photo differs by 60+ levels here
            assert diff < 12, f"{backend} vs torch on {f}: mean |diff| {diff:.1f} of 255"


def test_dataset_root_is_refused_by_loaders(tmp_path):
    make_messy_split(tmp_path / "d" / "train", tmp_path / "elsewhere")
    (tmp_path / "d" / "val" / "bird").mkdir(parents=True)
    with pytest.raises(SourceError, match="dataset root"):
        list_images(tmp_path / "d")


def test_torch_batched_decode_matches_pil_decode_on_odd_files(tmp_path):
    make_messy_split(tmp_path / "train", tmp_path / "elsewhere")
    crops = {}
    for decode in ("pil", "batched"):
        loader = make_loader("torch", tmp_path / "train", batch_size=64, image_size=SIZE,
                             train=False, num_workers=0, decode=decode)
        images, _ = _eval_batches(loader)
        crops[decode] = images
    diff = (crops["pil"] - crops["batched"]).abs().mean(dim=(1, 2, 3))
    # tensor vs PIL bicubic only; an uncomposited alpha or unscaled 16-bit file is 60+ off
    assert diff.max() < 8, diff


def test_a_class_missing_from_val_keeps_trains_labels(tmp_path):
    rng = np.random.default_rng(1)
    for split, classes in (("train", ("a", "b", "c")), ("val", ("a", "c"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(_smooth(rng)).save(tmp_path / split / c / f"{c}.jpg")
    val = list_images(tmp_path / "val")
    assert val.classes == ["a", "b", "c"] and val.labels == [0, 2], "c is class 2, as in train"
    loader = make_loader("torch", tmp_path / "val", batch_size=4, image_size=SIZE, train=False,
                         num_workers=0)
    assert loader.num_classes == 3


def test_hazard_list_is_computed_once_and_cached(tmp_path, monkeypatch):
    import pipeline.sources as sources
    make_messy_split(tmp_path / "train", tmp_path / "elsewhere")
    paths = list_images(tmp_path / "train").paths
    first = sources.cached_decode_hazards(paths)
    assert len(first) == 6 and first == sources.decode_hazards(paths)
    monkeypatch.setattr(sources, "decode_hazards", lambda *a: pytest.fail("not cached"))
    assert sources.cached_decode_hazards(paths) == first
    (tmp_path / "train" / "cat" / "f.JPEG").write_bytes((tmp_path / "train" / "bird" / "a.JPG").read_bytes())
    with pytest.raises(pytest.fail.Exception):   # a changed file invalidates the entry
        sources.cached_decode_hazards(paths)
