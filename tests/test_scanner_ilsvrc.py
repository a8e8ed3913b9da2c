"""ILSVRC layouts through every consumer (issue 16 items 6 and 7): the flat validation folder with
LOC_val_solution.csv through the torch and DALI loaders, Kaggle's ILSVRC/Data/CLS-LOC layout through
build_ffcv, an unlabelled split as an exit-2 error naming --val-labels, and --help with defaults."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import make_loader
from pipeline.beton import main as beton_main
from pipeline.build_ffcv import main as build_main

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[1]
WNIDS = ("n01440764", "n02102040", "n03000684")


@pytest.fixture(autouse=True)
def _decode_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAEPIPE_DECODE_CACHE", str(tmp_path / "decode-cache"))


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 48, 3), value, np.uint8)).save(path, quality=95)


def make_kaggle(root: Path, with_csv=True) -> Path:
    """Kaggle's download: root/{LOC_val_solution.csv, LOC_synset_mapping.txt, ILSVRC/Data/CLS-LOC/...}."""
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    for k, w in enumerate(WNIDS):
        for i in range(2):
            _jpeg(cls_loc / "train" / w / f"{w}_{i}.JPEG", 40 + 60 * k)
    rows = []
    for i, k in enumerate((2, 0, 1, 2), 1):   # val labels, deliberately not in class order
        name = f"ILSVRC2012_val_{i:08d}"
        _jpeg(cls_loc / "val" / f"{name}.JPEG", 40 + 60 * k)
        rows.append(f"{name},{WNIDS[k]} 1 2 30 30")
    _jpeg(cls_loc / "test" / "ILSVRC2012_test_00000001.JPEG", 7)
    if with_csv:
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn02102040 English springer\nn03000684 chain saw, chainsaw\n")
    return cls_loc


def test_kaggle_layout_builds_every_labelled_split(tmp_path, capsys):
    cls_loc = make_kaggle(tmp_path / "kaggle")
    out = tmp_path / "ffcv"
    assert build_main([str(cls_loc), str(out), "--num-workers", "1", "--quiet"]) == 0
    assert (out / "train.beton").is_file() and (out / "val.beton").is_file()
    assert not (out / "test.beton").exists()
    classes = json.loads((out / "classes.json").read_text())
    assert [c["folder"] for c in classes] == list(WNIDS) and classes[0]["name"] == "tench, Tinca tinca"
    assert [c["images"]["val"] for c in classes] == [1, 1, 2]
    assert "test" in capsys.readouterr().out


def test_unlabelled_split_is_an_error_naming_val_labels(tmp_path, capsys):
    cls_loc = make_kaggle(tmp_path / "kaggle", with_csv=False)
    assert build_main([str(cls_loc), str(tmp_path / "o"), "--num-workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--val-labels" in err and str(cls_loc / "val") in err and "Traceback" not in err
    assert not (tmp_path / "o" / "train.beton").exists(), "nothing is converted before the error"


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_flat_val_through_loaders(tmp_path, backend):
    cls_loc = make_kaggle(tmp_path / "kaggle")
    loader = make_loader(backend, cls_loc / "val", batch_size=8, image_size=32, train=False,
                         num_workers=1)
    assert loader.classes == list(WNIDS) and loader.num_samples == 4
    labels = np.concatenate([y.numpy() for _, y in loader])
    assert labels.tolist() == [2, 0, 1, 2]
    train = make_loader(backend, cls_loc / "train", batch_size=8, image_size=32, train=False,
                        num_workers=1)
    assert train.classes == loader.classes


def test_flat_val_without_labels_names_val_labels(tmp_path):
    cls_loc = make_kaggle(tmp_path / "kaggle", with_csv=False)
    with pytest.raises(ValueError, match="--val-labels"):
        make_loader("torch", cls_loc / "val", batch_size=8, image_size=32, train=False)


def test_help_shows_defaults_and_outputs(capsys):
    with pytest.raises(SystemExit):
        build_main(["--help"])
    text = capsys.readouterr().out
    for needle in ("default: 90", "default: 256", "default: jpg", "report.csv", "classes.json",
                   ".lock", "--val-labels"):
        assert needle in text, needle
    with pytest.raises(SystemExit):
        beton_main(["--help"])
    text = capsys.readouterr().out
    assert "--verify" in text and "default:" in text


def test_cli_as_a_user_runs_it(tmp_path):
    cls_loc = make_kaggle(tmp_path / "kaggle")
    (cls_loc.parents[2] / "LOC_val_solution.csv").unlink()
    p = subprocess.run([sys.executable, "-m", "pipeline.build_ffcv", str(cls_loc), str(tmp_path / "o"),
                        "--quiet", "--num-workers", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=200)
    assert p.returncode == 2 and "--val-labels" in p.stderr and "Traceback" not in p.stderr
