"""pipeline.sources: every odd image file decodes to the right RGB image or a clear reason, and the
three source layouts are found. ``make_bad_tree`` is reused by tests/test_build_ffcv.py."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.sources import BadImageError, SourceError, load_rgb, open_rgb, scan_source


def _png_bomb(path, w=100_000, h=100_000):
    """A tiny PNG whose header claims w x h pixels (a decompression bomb; never decode it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _photo(rng, w=48, h=40):
    """A smooth random colour image (photo-like, so JPEG round trips stay close)."""
    small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC))


# name -> (expected status, substring of the reason); files live in class folder "a" or "b"
EXPECTED = {
    "a/good0.jpg": ("converted", ""),
    "a/good1.JPEG": ("converted", ""),
    "a/truncated.jpg": ("skipped", "truncated"),
    "a/zero.jpg": ("skipped", "empty file"),
    "a/notes.txt": ("skipped", "not an image"),
    "a/garbage.jpg": ("skipped", "not an image"),
    "a/alpha.png": ("fixed", "composited on white"),
    "a/la.png": ("fixed", "composited on white"),
    "a/gray16.png": ("fixed", "scaled to 8-bit"),
    "a/palette.png": ("fixed", "P converted"),
    "a/palette_transparent.gif": ("fixed", "composited on white"),
    "b/gray.jpg": ("fixed", "grayscale"),
    "b/cmyk.jpg": ("fixed", "CMYK converted"),
    "b/exif_rotated.jpg": ("fixed", "EXIF orientation 6"),
    "b/one_pixel.png": ("skipped", "too small"),
    "b/bomb.png": ("skipped", "decompression bomb"),
    "b/truncated.png": ("skipped", ""),
    "b/broken_link.jpg": ("skipped", "unreadable"),
    "b/.DS_Store": ("skipped", "hidden"),
    "b/nested/deeper.jpg": ("converted", ""),
    "stray.jpg": ("skipped", "not inside a class folder"),
}


def make_bad_tree(root, seed=0):
    """A split folder with every kind of bad or odd input, plus an empty class folder ``c``."""
    rng = np.random.default_rng(seed)
    a, b = root / "a", root / "b"
    (b / "nested").mkdir(parents=True)
    a.mkdir()
    (root / "c").mkdir()  # empty class
    for n in ("good0.jpg", "good1.JPEG"):
        Image.fromarray(_photo(rng)).save(a / n, "JPEG", quality=95)
    Image.fromarray(_photo(rng)).save(b / "nested/deeper.jpg", "JPEG", quality=95)
    Image.fromarray(_photo(rng)).save(root / "stray.jpg", "JPEG")
    full = (a / "good0.jpg").read_bytes()
    (a / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (a / "zero.jpg").write_bytes(b"")
    (a / "notes.txt").write_text("not an image\n")
    (a / "garbage.jpg").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, 16:, 3] = 255           # left half fully transparent (hidden colour is green)
    Image.fromarray(rgba, "RGBA").save(a / "alpha.png")
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0], la[:16, :, 1] = 50, 255   # bottom half transparent
    Image.fromarray(la, "LA").save(a / "la.png")
    g16 = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)   # 0 .. 65472
    Image.fromarray(g16).save(a / "gray16.png")
    Image.fromarray(_photo(rng, 32, 32)).convert("P", palette=Image.ADAPTIVE).save(a / "palette.png")
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    pal.save(a / "palette_transparent.gif", transparency=0)
    Image.fromarray(_photo(rng)[..., 0]).save(b / "gray.jpg", "JPEG", quality=95)
    Image.fromarray(_photo(rng)).convert("CMYK").save(b / "cmyk.jpg", "JPEG", quality=95)
    tall = np.zeros((40, 20, 3), np.uint8)
    tall[:10] = 255                  # stored 20 wide x 40 tall, white on top
    ex = Image.Image().getexif()
    ex[0x0112] = 6                   # "rotate 90 CW to display"
    Image.fromarray(tall).save(b / "exif_rotated.jpg", "JPEG", quality=95, exif=ex.tobytes())
    Image.new("RGB", (1, 1), (9, 9, 9)).save(b / "one_pixel.png")
    _png_bomb(b / "bomb.png")
    Image.fromarray(_photo(rng)).save(b / "ok.png")
    data = (b / "ok.png").read_bytes()
    (b / "ok.png").unlink()
    (b / "truncated.png").write_bytes(data[: len(data) // 2])
    os.symlink(root / "does-not-exist.jpg", b / "broken_link.jpg")
    (b / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_open_rgb_handles_every_kind(tmp_path):
    root = make_bad_tree(tmp_path / "train")
    for rel, (status, reason) in EXPECTED.items():
        if rel.startswith(".") or "/." in rel or rel == "stray.jpg":
            continue
        notes = []
        if status == "skipped":
            with pytest.raises(BadImageError) as e:
                open_rgb(root / rel, notes=notes, min_size=8)
            assert reason.lower() in e.value.reason.lower(), (rel, e.value.reason)
            assert str(root / rel) in str(e.value)
        else:
            img = open_rgb(root / rel, notes=notes, min_size=8)
            assert img.mode == "RGB" and img.size[0] > 0, rel
            assert (status == "fixed") == bool(notes), (rel, notes)
            assert reason in "; ".join(notes), (rel, notes)


def test_open_rgb_pixels_of_fixed_images(tmp_path):
    root = make_bad_tree(tmp_path / "train")
    alpha = load_rgb(root / "a/alpha.png")
    assert (alpha[:, :16] == 255).all(), "transparent pixels must become white, not the hidden green"
    assert tuple(alpha[0, 20]) == (10, 200, 30)
    la = load_rgb(root / "a/la.png")
    assert (la[16:] == 255).all() and (la[:16] == 50).all()
    g = load_rgb(root / "a/gray16.png")[..., 0].astype(int)
    src = (np.arange(32 * 32).reshape(32, 32) * 64) / 257.0
    assert np.abs(g - src).max() <= 1, "16-bit must be scaled, not clipped at 255"
    assert g.max() > 250 and g[0, 0] == 0
    pt = load_rgb(root / "a/palette_transparent.gif")
    assert (pt[:, :16] == (255, 0, 0)).all() and (pt[:, 16:] == 255).all()
    rot = load_rgb(root / "b/exif_rotated.jpg")
    assert rot.shape == (20, 40, 3), "EXIF orientation 6 turns a 20x40 (w x h) photo into 40x20"
    assert rot[:, -5:].mean() > 200 and rot[:, :20].mean() < 40, "white top moved to the right"
    cmyk = load_rgb(root / "b/cmyk.jpg")
    assert cmyk.shape == (40, 48, 3) and cmyk.dtype == np.uint8


def test_bomb_limit_and_min_size_are_options(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(p)
    with pytest.raises(BadImageError, match="decompression bomb"):
        open_rgb(p, max_pixels=50_000)
    assert open_rgb(p, max_pixels=None).size == (300, 300)
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    assert open_rgb(tmp_path / "one.png").size == (1, 1)   # loaders' default accepts tiny images


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.jpg"
    Image.new("RGB", (16, 16)).save(p)
    p.chmod(0)
    with pytest.raises(BadImageError, match="permission denied"):
        open_rgb(p)


def test_scan_layouts(tmp_path):
    tree = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c in ("n02", "n01"):
            (tree / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(tree / split / c / f"{c}_1.JPEG")
    (tree / "train" / "n03").mkdir()  # only in train: still a class, reported empty
    s = scan_source(tree)
    assert sorted(s.splits) == ["train", "val"] and s.classes == ["n01", "n02", "n03"]
    assert s.splits["train"].empty_classes == ["n03"]
    assert any("val" in w and "2 of the 3" in w for w in s.warnings)
    single = scan_source(tree / "val")
    # one split of a tree keeps its siblings' classes: val's labels stay train's labels
    assert list(single.splits) == ["val"] and single.classes == ["n01", "n02", "n03"]
    assert any("next to" in w for w in single.warnings), single.warnings

    flat = tmp_path / "ILSVRC" / "val"
    flat.mkdir(parents=True)
    for i, wnid in ((1, "n09"), (2, "n05"), (3, "n09")):
        Image.new("RGB", (16, 16)).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    Image.new("RGB", (16, 16)).save(flat / "ILSVRC2012_val_00000099.JPEG")   # not in the CSV
    (tmp_path / "ILSVRC" / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n09 1 2 3 4 n09 5 6 7 8\n"
        "ILSVRC2012_val_00000002,n05 1 2 3 4\nILSVRC2012_val_00000003,n09 1 1 2 2\n")
    (tmp_path / "ILSVRC" / "LOC_synset_mapping.txt").write_text("n05 cat, feline\nn09 dog\n")
    s = scan_source(flat)
    assert list(s.splits) == ["val"] and s.splits["val"].kind == "ilsvrc_flat_val"
    assert s.classes == ["n05", "n09"] and s.class_names == {"n05": "cat, feline", "n09": "dog"}
    assert [lbl for _, lbl in s.splits["val"].files] == ["n09", "n05", "n09"]
    assert "no label" in s.splits["val"].skipped[0][1]


def test_missing_or_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match=str(tmp_path / "nope")):
        scan_source(tmp_path / "nope")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images found in .*empty"):
        scan_source(tmp_path / "empty")


def test_bad_class_names_file_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "train" / "a" / "x.jpg")
    bad = tmp_path / "names.json"
    bad.write_text('{"classes": [{"no_folder": 1}]}')
    with pytest.raises(SourceError, match="names.json: unreadable class names"):
        scan_source(tmp_path / "train", class_names=bad)
    (tmp_path / "classes.tsv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SourceError, match="classes.tsv"):
        scan_source(tmp_path / "train")
