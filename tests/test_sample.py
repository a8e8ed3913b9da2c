"""pipeline.sample: deterministic files, the ImageFolder layout, and classes that need spatial
structure (colour statistics near chance, translation-invariant spatial features well above)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.sample import CLASSES, FOLDERS, main, make_sample_dataset


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_classes_tsv(tmp_path):
    out = make_sample_dataset(tmp_path / "s", image_size=32, train_per_class=3, val_per_class=2,
                              progress=False)
    for split, n in (("train", 3), ("val", 2)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == list(FOLDERS)
        for f in folders:
            files = sorted((out / split / f).glob("*.jpg"))
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    lines = (out / "classes.tsv").read_text().splitlines()
    assert lines[0] == "index\tfolder\tname" and len(lines) == 11
    assert lines[1].split("\t") == ["0", FOLDERS[0], "disc"]
    # class index = position of the folder in the sorted folder list (project contract)
    assert [ln.split("\t")[1] for ln in lines[1:]] == sorted(FOLDERS)


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    kw = dict(image_size=48, train_per_class=25, val_per_class=3, progress=False)
    a = _digest(make_sample_dataset(tmp_path / "a", seed=3, num_workers=1, **kw))
    b = _digest(make_sample_dataset(tmp_path / "b", seed=3, num_workers=2, **kw))
    c = _digest(make_sample_dataset(tmp_path / "c", seed=4, num_workers=1, **kw))
    assert a == b and len(a) == 281
    same = sum(a[k] == c[k] for k in a if k.endswith(".jpg"))
    assert same == 0, "another seed must give other images"


def _load(root, split):
    xs, ys = [], []
    for c, f in enumerate(FOLDERS):
        for p in sorted((root / split / f).glob("*.jpg")):
            xs.append(np.asarray(Image.open(p).convert("RGB"), np.float32))
            ys.append(c)
    return np.stack(xs), np.array(ys)


def _ridge_accuracy(ftr, ytr, fte, yte, lam=10.0):
    """A linear classifier (ridge regression onto one-hot labels, closed form) -> test accuracy."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    a = np.c_[(ftr - mu) / sd, np.ones(len(ftr))]
    b = np.c_[(fte - mu) / sd, np.ones(len(fte))]
    w = np.linalg.solve(a.T @ a + lam * 0.01 * len(a) * np.eye(a.shape[1]), a.T @ np.eye(10)[ytr])
    return float(((b @ w).argmax(1) == yte).mean())


def _colour_stats(x):
    return np.concatenate([x.mean((1, 2)), x.std((1, 2))], 1)


def _spatial(x):
    """Translation-invariant spatial features: log |FFT| of the contrast-normalised gray image."""
    g = x.mean(3)
    g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
    return np.log1p(np.abs(np.fft.fft2(g))[:, :16, :16].reshape(len(x), -1))


def test_colour_statistics_are_near_chance_but_spatial_structure_separates(tmp_path):
    out = make_sample_dataset(tmp_path / "s", image_size=64, train_per_class=60, val_per_class=30,
                              seed=1, progress=False)
    xtr, ytr = _load(out, "train")
    xte, yte = _load(out, "val")
    colour = _ridge_accuracy(_colour_stats(xtr), ytr, _colour_stats(xte), yte)
    spatial = _ridge_accuracy(_spatial(xtr), ytr, _spatial(xte), yte)
    print(f"linear probe accuracy: colour mean/std {colour:.3f}, spatial (|FFT|) {spatial:.3f}, chance 0.1")
    assert colour < 0.2, f"colour statistics predict the class too well ({colour:.2f})"
    assert spatial > 0.35 and spatial > colour + 0.2, f"spatial features too weak ({spatial:.2f})"


def test_imagenet_size_files_weigh_like_photos(tmp_path):
    out = make_sample_dataset(tmp_path / "big", imagenet_size=True, train_per_class=2,
                              val_per_class=0, progress=False)
    files = sorted((out / "train").rglob("*.jpg"))
    assert len(files) == 20
    with Image.open(files[0]) as im:
        assert im.size == (500, 375)
    mean_kb = np.mean([p.stat().st_size for p in files]) / 1000
    assert 90 < mean_kb < 130, f"mean JPEG size {mean_kb:.1f} kB, want ~110 kB"


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--imagenet-size" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "cli"), "--image-size", "24", "--train-per-class", "1",
                 "--val-per-class", "1"]) == 0
    assert len(list((tmp_path / "cli").rglob("*.jpg"))) == 2 * len(CLASSES)
