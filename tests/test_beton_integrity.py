"""Integrity of build_ffcv's output (issue 15): per-sample checksums name corrupted samples, one
build per OUT at a time (a lock naming the holder's pid), OUT never inside SRC, and no OUT that
mixes files of different builds."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.beton import main as beton_main
from pipeline.beton import verify_beton
from pipeline.build_ffcv import build, main as build_main
from pipeline.sample import make_sample_dataset

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[1]
QUIET = dict(num_workers=1, progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    src = make_sample_dataset(root / "src", train_per_class=4, val_per_class=2, progress=False)
    build(src, root / "out", **QUIET)
    return root


def _allocations(beton):
    from ffcv.reader import Reader
    r = Reader(str(beton))
    return r, np.asarray(r.alloc_table)


def test_build_writes_checksums_that_verify(built):
    out = built / "out"
    for split, n in (("train", 40), ("val", 20)):
        assert (out / f"{split}.beton.sums").is_file()
        r = verify_beton(out / f"{split}.beton")
        assert r.ok and r.checked == "checksums" and r.num_samples == n, r.message
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"} and manifest["build_id"]


def test_verify_names_the_samples_of_a_zeroed_region(built, tmp_path, capsys):
    bad = tmp_path / "train.beton"
    shutil.copy(built / "out" / "train.beton", bad)
    shutil.copy(built / "out" / "train.beton.sums", tmp_path / "train.beton.sums")
    _, table = _allocations(bad)
    by_ptr = table[np.argsort(table["ptr"])]
    k = len(by_ptr) // 3
    start = int(by_ptr["ptr"][k]) + 10          # from inside one sample's JPEG ...
    stop = int(by_ptr["ptr"][k + 2]) + 5        # ... into the one two further on
    hit = sorted(int(e["sample_id"]) for e in by_ptr
                 if e["ptr"] < stop and e["ptr"] + e["size"] > start)
    with open(bad, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (stop - start))
    r = verify_beton(bad)
    assert not r.ok and r.bad_samples == hit, (r.bad_samples, hit)
    assert beton_main(["--verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and ", ".join(map(str, hit)) in out


def test_verify_finds_a_changed_label(built, tmp_path):
    bad = tmp_path / "val.beton"
    shutil.copy(built / "out" / "val.beton", bad)
    shutil.copy(built / "out" / "val.beton.sums", tmp_path / "val.beton.sums")
    reader, _ = _allocations(bad)
    meta = reader.metadata
    from ffcv.types import FieldDescType, HeaderType
    offset = HeaderType.itemsize + 2 * FieldDescType.itemsize + 5 * meta.dtype.itemsize \
        + meta.dtype.fields["f1"][1]
    label = int(meta["f1"][5])
    with open(bad, "r+b") as f:
        f.seek(offset)
        f.write(np.int64((label + 1) % 10).tobytes())
    r = verify_beton(bad)
    assert not r.ok and r.bad_samples == [5]


def test_verify_without_sums_checks_structure_only(built, tmp_path):
    lone = tmp_path / "lone.beton"
    shutil.copy(built / "out" / "val.beton", lone)
    r = verify_beton(lone)
    assert r.ok and r.checked == "structure" and "no checksum file" in r.message
    r = verify_beton(lone, require_sums=True)
    assert not r.ok and "lone.beton.sums" in r.message
    assert beton_main(["--write-sums", str(lone)]) == 0       # for files built without sums
    assert verify_beton(lone, require_sums=True).ok


def test_second_build_into_the_same_out_names_the_holder(built, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom common.locks import exclusive_lock\n"
         f"with exclusive_lock({str(out / '.lock')!r}):\n"
         "    print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert build_main([str(built / "src"), str(out), "--quiet", "--num-workers", "1"]) == 2
        err = capsys.readouterr().err
        assert str(holder.pid) in err and str(out) in err
        assert not (out / "train.beton").exists()
    finally:
        holder.kill()
        holder.wait()


def test_out_inside_src_is_refused(built, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(built / "src", src)
    for out in (src / "train" / "out", src):
        assert build_main([str(src), str(out), "--quiet", "--num-workers", "1"]) == 2
        assert "inside" in capsys.readouterr().err
    assert not (src / "train" / "out").exists()


def test_a_build_cannot_mix_its_files_with_another_builds(built, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(built / "out", out)
    other = make_sample_dataset(tmp_path / "other", train_per_class=1, val_per_class=1, progress=False)
    (other / "val" / "0_disc").rename(other / "val" / "zz_new")     # different classes
    shutil.rmtree(other / "train")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert build_main([str(other), str(out), "--quiet", "--num-workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "train.beton" in err and "classes" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before, "a refused build must leave OUT as it was"

    # a file copied in from another build is named by verify
    other_out = tmp_path / "other_out"
    build(built / "src", other_out, splits=["val"], **QUIET)
    for name in ("val.beton", "val.beton.sums"):
        shutil.copy(other_out / name, out / name)
    r = verify_beton(out / "val.beton")
    assert not r.ok and "mixed output folder" in r.message


def test_stale_temporary_files_are_swept(built, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    junk = out / ".train.beton.12345.tmp"
    junk.write_bytes(b"half a beton")
    lines = []
    build(built / "src", out, num_workers=1, progress=False, log=lines.append, splits=["val"])
    assert not junk.exists() and any("stale" in line for line in lines)


def test_damaged_sums_file_and_missing_beton_are_named(built, tmp_path, capsys):
    shutil.copy(built / "out" / "val.beton", tmp_path / "val.beton")
    (tmp_path / "val.beton.sums").write_bytes((built / "out" / "val.beton.sums").read_bytes()[:100])
    assert beton_main(["--verify", str(tmp_path / "val.beton"), str(tmp_path / "nope.beton")]) == 1
    out = capsys.readouterr().out
    assert "val.beton.sums: not a readable checksum file" in out and "nope.beton" in out
