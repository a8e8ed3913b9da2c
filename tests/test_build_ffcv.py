"""pipeline.build_ffcv and pipeline.beton on real FFCV files: bad input is reported, never fatal;
labels and pixels round-trip; a killed conversion leaves no .beton; broken files are refused."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.locks import LockedError, exclusive_lock
from pipeline.beton import BetonError, check_beton, read_samples
from pipeline.build_ffcv import build, main
from pipeline.sample import make_sample_dataset
from pipeline.shared_data import imagenette_dir
from pipeline.sources import load_rgb
from tests.test_sources import EXPECTED, make_bad_tree

REPO = Path(__file__).resolve().parents[1]
IMAGENETTE = imagenette_dir()
pytestmark = pytest.mark.timeout(240)


def _report(out):
    with open(out / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_close(stored, source, what, min_psnr=30.0, max_mean=4.0):
    """Stored JPEG pixels vs PIL's decode of the source: within JPEG q90 re-encoding tolerance."""
    assert stored.shape == source.shape, what
    diff = np.abs(stored.astype(np.int16) - source.astype(np.int16))
    mse = float((diff.astype(np.float64) ** 2).mean())
    psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-9))
    assert diff.mean() < max_mean and psnr > min_psnr, f"{what}: mean abs diff {diff.mean():.2f}, PSNR {psnr:.1f}"


def _written(out, split):
    """Report rows of the images in ``split``'s beton, in sample order (the report keeps it)."""
    return [r for r in _report(out) if r["split"] == split and r["status"] in ("converted", "fixed")]


def test_every_bad_input_is_reported_and_good_ones_round_trip(tmp_path):
    src = make_bad_tree(tmp_path / "train")
    out = tmp_path / "out"
    lines = []
    res = build(src, out, num_workers=2, progress=False, log=lines.append)
    rows = {os.path.relpath(r["path"], src): r for r in _report(out)}
    for rel, (status, reason) in EXPECTED.items():
        assert rel in rows, f"{rel} missing from report.csv"
        assert rows[rel]["status"] == status, (rel, rows[rel])
        assert reason.lower() in rows[rel]["reason"].lower(), (rel, rows[rel])
        if status == "skipped":
            assert rows[rel]["reason"], f"{rel} skipped without a reason"
    assert rows["c"]["status"] == "skipped" and "empty class" in rows["c"]["reason"]
    n_good = sum(s != "skipped" for s, _ in EXPECTED.values())
    n_skipped = sum(s == "skipped" for s, _ in EXPECTED.values()) + 1   # + empty class folder
    split = res["splits"]["train"]
    assert split["num_samples"] == n_good and split["skipped"] == n_skipped
    assert check_beton(out / "train.beton")["num_samples"] == n_good
    assert any(f"skipped {n_skipped}" in line for line in lines), lines
    assert any("decompression bomb" in line for line in lines)

    classes = json.loads((out / "classes.json").read_text())
    assert [(c["index"], c["folder"]) for c in classes] == [(0, "a"), (1, "b"), (2, "c")]
    assert classes[2]["images"] == {"train": 0}
    written = _written(out, "train")
    samples = list(read_samples(out / "train.beton"))
    assert len(samples) == len(written) == n_good
    for (i, img, label), row in zip(samples, written):
        assert label == {"a": 0, "b": 1}[row["class"]], row
        # tiny, sharp-edged synthetic images (dithered palette, 1-bit-like alpha): looser bound
        _assert_close(img, load_rgb(row["path"]), row["path"], min_psnr=27.0, max_mean=7.0)
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_sample_dataset_round_trips_through_ffcv_loader(tmp_path):
    """The real FFCV Loader reads what we wrote (no NormalizeImage: it hangs FFCV 1.0.2 on CPU)."""
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    src = make_sample_dataset(tmp_path / "sample", train_per_class=6, val_per_class=3, progress=False)
    out = tmp_path / "ffcv"
    res = build(src, out, max_resolution=64, num_workers=2, progress=False, log=lambda *_: None)
    assert res["splits"]["train"]["num_samples"] == 60 and res["splits"]["val"]["num_samples"] == 30
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    assert names[0] == "disc" and names[9] == "two discs"
    loader = Loader(str(out / "val.beton"), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = zip(*[(np.array(x), np.array(y).ravel()) for x, y in loader])  # copies: FFCV reuses buffers
    images, labels = np.concatenate(images), np.concatenate(labels)
    written = _written(out, "val")
    assert len(images) == len(written) == 30
    folders = sorted(p.name for p in (src / "val").iterdir())
    assert labels.tolist() == [folders.index(r["class"]) for r in written]
    for img, row in zip(images, written):
        _assert_close(img, load_rgb(row["path"]), row["path"])


def test_write_modes_and_resizing(tmp_path):
    src = make_sample_dataset(tmp_path / "big", imagenet_size=True, train_per_class=1,
                              val_per_class=0, progress=False)
    raw = build(src, tmp_path / "raw", write_mode="raw", max_resolution=0, num_workers=1,
                progress=False, log=lambda *_: None)
    assert raw["splits"]["train"]["num_samples"] == 10
    for (_, img, _), row in zip(read_samples(tmp_path / "raw/train.beton"), _written(tmp_path / "raw", "train")):
        assert np.array_equal(img, load_rgb(row["path"])), "raw mode must store the decoded pixels"
    build(src, tmp_path / "small", write_mode="smart", max_resolution=128, num_workers=1,
          progress=False, log=lambda *_: None)
    for _, img, _ in read_samples(tmp_path / "small/train.beton"):
        assert img.shape == (96, 128, 3), "500x375 at max-resolution 128 -> 128x96"
    from ffcv.reader import Reader
    modes = Reader(str(tmp_path / "small/train.beton")).metadata["f0"]["mode"]
    # smart's default threshold is 3*(max_res/2)^2 = 12288 bytes; 128x96x3 = 36864 > it -> jpg (0)
    assert (modes == 0).all(), "FFCV's smart mode without a threshold stores all raw; ours must not"


def test_imagenette_subset_round_trips(tmp_path):
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"{IMAGENETTE} not available")
    out = tmp_path / "nette"
    res = build(IMAGENETTE, out, subset=3, num_workers=2, progress=False, log=lambda *_: None)
    assert res["splits"]["train"]["num_samples"] == 30 and res["splits"]["val"]["num_samples"] == 30
    classes = json.loads((out / "classes.json").read_text())
    assert classes[0]["folder"] == "n01440764" and classes[0]["name"] == "tench"
    wnids = [c["folder"] for c in classes]
    for split in ("train", "val"):
        written = _written(out, split)
        for (_, img, label), row in zip(read_samples(out / f"{split}.beton"), written):
            assert label == wnids.index(Path(row["path"]).parent.name)
            _assert_close(img, load_rgb(row["path"]), row["path"])


def test_killed_conversion_leaves_no_beton_and_rerun_works(tmp_path):
    src = make_sample_dataset(tmp_path / "big", imagenet_size=True, train_per_class=20,
                              val_per_class=0, progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.build_ffcv", str(src), str(out), "--num-workers", "2",
           "--chunk-size", "10", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tmp = None
    try:
        deadline = time.time() + 120
        while tmp is None and time.time() < deadline and proc.poll() is None:
            found = list(out.glob(".train.beton.*.tmp")) if out.exists() else []
            tmp = found[0] if found else None
            time.sleep(0.01)
        assert tmp is not None, "the conversion never started writing"
        time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the CLI and its FFCV writer processes
        proc.wait(timeout=30)
    _wait_until_unlocked(out)
    assert not (out / "train.beton").exists(), "a killed conversion left a .beton"
    assert tmp.exists()
    with pytest.raises(BetonError, match=str(tmp)):
        check_beton(tmp)
    lines = []
    res = build(src, out, num_workers=2, progress=False, log=lines.append)
    assert res["splits"]["train"]["num_samples"] == 200
    assert check_beton(out / "train.beton")["num_samples"] == 200
    assert not tmp.exists() and any("stale" in line for line in lines)


def _wait_until_unlocked(out, timeout=30.0):
    """The killed build's forked workers share its OUT/.lock (flock) until the kernel has ended
    them too, a moment after the parent: wait for that, as a user restarting at once would."""
    deadline = time.time() + timeout
    while True:
        try:
            with exclusive_lock(out / ".lock", out):
                return
        except LockedError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def test_check_beton_refuses_truncated_and_foreign_files(tmp_path):
    src = make_sample_dataset(tmp_path / "s", train_per_class=4, val_per_class=0, progress=False)
    build(src, tmp_path / "o", num_workers=1, progress=False, log=lambda *_: None)
    good = tmp_path / "o/train.beton"
    info = check_beton(good)
    assert info["num_samples"] == 40 and info["fields"] == {"image": "RGBImageField", "label": "IntField"}
    data = good.read_bytes()
    cases = {
        "empty.beton": (b"", "smaller than"),
        "header_only.beton": (data[:24], "truncated"),
        "no_table.beton": (data[: len(data) - 100], "truncated"),
        "half.beton": (data[: len(data) // 2], "truncated"),
        "photo.beton": (next((src / "train").rglob("*.jpg")).read_bytes(), "format version"),
        "text.beton": (b"hello, I am not a beton file at all" * 10, "format version"),
    }
    for name, (content, problem) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(BetonError) as e:
            check_beton(p)
        assert str(p) in str(e.value) and problem in str(e.value), (name, str(e.value))
    with pytest.raises(BetonError, match="not found"):
        check_beton(tmp_path / "missing.beton")


def test_cli_errors_name_the_path(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no images found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    help_text = capsys.readouterr().out
    assert e.value.code == 0 and "--max-resolution" in help_text and "--write-mode" in help_text
