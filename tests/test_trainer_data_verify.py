"""data.verify: the trainer checks its .beton files against their checksums before any work.

A .beton whose image bytes were damaged (here: a zeroed stretch of its data region) trains without
a word otherwise: FFCV decodes garbage or crashes mid-epoch. With ``data.verify`` (default auto:
files under 2 GiB that have a ``.sums`` beside them) the run stops at start with exit 2 and one
line naming the file and the bad sample indices (``pipeline.beton.verify_beton``).
"""
import json
import os
import shutil
import time

import numpy as np
import pytest

from pipeline.beton import main as beton_main
from pipeline.beton import stamp_path, sums_path, verified_stamp
from trainer.config import ConfigError, load_config
from trainer.preflight import DataError, verify_data
from trainer.pretrain import main

from .test_trainer_helpers import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)


@pytest.fixture(scope="module")
def betons(tiny_data, tmp_path_factory):
    """A tiny build_ffcv output (train.beton + train.beton.sums) and a copy whose data is zeroed."""
    from ffcv.reader import Reader

    from pipeline.build_ffcv import build
    out = tmp_path_factory.mktemp("beton")
    build(tiny_data, out / "good", num_workers=1, max_resolution=32, progress=False, log=lambda *a, **k: None)
    bad = out / "bad"
    bad.mkdir()
    for name in ("train.beton", "train.beton.sums"):
        shutil.copy(out / "good" / name, bad / name)
    table = np.asarray(Reader(str(bad / "train.beton")).alloc_table)
    by_ptr = table[np.argsort(table["ptr"])]
    start, stop = int(by_ptr["ptr"][3]) + 10, int(by_ptr["ptr"][5]) + 5  # inside sample 3's bytes .. into 5's
    hit = sorted(int(e["sample_id"]) for e in by_ptr if e["ptr"] < stop and e["ptr"] + e["size"] > start)
    with open(bad / "train.beton", "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (stop - start))
    return out / "good", bad, hit


def _cfg(tmp_path, tiny_data, beton, *overrides):
    path = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    return load_config(path, ["data.backend=ffcv", f"data.train_path={beton}", *overrides])


def test_a_zeroed_beton_stops_the_run_at_start_with_exit_2(betons, tiny_data, tmp_path, capsys):
    _, bad, hit = betons
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    assert main(["--config", str(cfg), "data.backend=ffcv", f"data.train_path={bad / 'train.beton'}"]) == 2
    err = capsys.readouterr().err.strip()  # old code: no data.verify; training started on damaged data
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {bad / 'train.beton'}: ") and "differ from their checksums" in err, err
    assert ", ".join(map(str, hit)) in err, (hit, err)
    assert not (tmp_path / "run" / "metrics.zarr").exists()  # before any work
    assert not list((tmp_path / "run").glob("checkpoints/*.pth"))


def test_verify_modes(betons, tiny_data, tmp_path):
    good, bad, _ = betons
    said = []
    (r,) = verify_data(_cfg(tmp_path, tiny_data, good / "train.beton"), said.append)
    assert r.ok and r.checked == "checksums" and r.num_samples == 40 and "all sample checksums match" in said[0]
    # auto: a file above the size limit is named, not read
    assert verify_data(_cfg(tmp_path, tiny_data, bad / "train.beton"), said.append, auto_max_bytes=1000) == []
    assert "not verified" in said[-1] and "data.verify=always" in said[-1]
    assert verify_data(_cfg(tmp_path, tiny_data, bad / "train.beton", "data.verify=never")) == []
    with pytest.raises(DataError, match="differ from their checksums"):
        verify_data(_cfg(tmp_path, tiny_data, bad / "train.beton", "data.verify=always"), auto_max_bytes=1000)
    # without checksums: auto skips the file, always requires them
    bare = tmp_path / "bare.beton"
    shutil.copy(good / "train.beton", bare)
    assert verify_data(_cfg(tmp_path, tiny_data, bare)) == []
    with pytest.raises(DataError, match="no checksum file"):
        verify_data(_cfg(tmp_path, tiny_data, bare, "data.verify=always"))
    # other back ends read image folders: nothing to verify
    assert verify_data(load_config(write_config(tmp_path / "t.yaml", tiny_data, tmp_path / "run"))) == []


def test_verify_key_is_checked():
    with pytest.raises(ConfigError, match="'data.verify' must be one of auto, always, never"):
        load_config(None, ["data.verify=sometimes"])


# --- a passing check is remembered (<file>.verified) and trusted by auto while nothing changed ---

def _copy(src, dst):
    dst.mkdir()
    for name in ("train.beton", "train.beton.sums"):
        shutil.copy(src / name, dst / name)
    return dst / "train.beton"


def test_a_passing_check_is_remembered_and_auto_skips_the_read_while_the_file_is_unchanged(
        betons, tiny_data, tmp_path):
    beton = _copy(betons[0], tmp_path / "d")
    said = []
    (first,) = verify_data(_cfg(tmp_path, tiny_data, beton), said.append)
    assert first.ok and not first.verified_at and "all sample checksums match" in said[-1]
    assert stamp_path(beton).is_file()  # old code: every start read every file again (6 s on Imagenette)
    (second,) = verify_data(_cfg(tmp_path, tiny_data, beton), said.append)
    assert second.ok and second.verified_at and second.num_samples == 40, said
    assert said[-1].startswith(f"data.train_path: {beton}: ok, 40 samples") and "unchanged since" in said[-1]
    assert "data.verify=always re-reads it" in said[-1]
    (third,) = verify_data(_cfg(tmp_path, tiny_data, beton, "data.verify=always"), said.append)
    assert third.ok and not third.verified_at  # always reads, whatever the stamp says


def test_damage_after_a_passing_check_is_found_even_with_size_and_mtime_put_back(betons, tiny_data, tmp_path):
    good, bad, hit = betons
    beton = _copy(good, tmp_path / "d")
    verify_data(_cfg(tmp_path, tiny_data, beton), lambda *a: None)
    assert stamp_path(beton).is_file()
    before = beton.stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick
    damaged = (bad / "train.beton").read_bytes()
    assert len(damaged) == before.st_size
    with open(beton, "r+b") as f:  # same inode, same size
        f.write(damaged)
    os.utime(beton, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: only the ctime moved
    assert beton.stat().st_mtime_ns == before.st_mtime_ns and beton.stat().st_ino == before.st_ino
    with pytest.raises(DataError, match="differ from their checksums") as e:
        verify_data(_cfg(tmp_path, tiny_data, beton))
    assert ", ".join(map(str, hit)) in str(e.value)


def test_a_changed_sums_file_or_a_foreign_stamp_means_a_new_read(betons, tiny_data, tmp_path):
    beton = _copy(betons[0], tmp_path / "d")
    cfg = _cfg(tmp_path, tiny_data, beton)
    verify_data(cfg, lambda *a: None)
    os.utime(sums_path(beton))                               # the checksums were touched
    (r,) = verify_data(cfg, lambda *a: None)
    assert not r.verified_at
    for junk in ("not json {", "[1, 2]", json.dumps({"format": "something else"}),
                 stamp_path(beton).read_text().replace('"num_samples": 40', '"num_samples": "40"')):
        stamp_path(beton).write_text(junk)
        (r,) = verify_data(cfg, lambda *a: None)
        assert r.ok and not r.verified_at, junk               # ignored: the file is read again ...
        assert verified_stamp(beton)["num_samples"] == 40     # ... and the stamp rewritten
    (tmp_path / "d" / "manifest.json").write_text("{}")       # a manifest appeared beside it
    assert verified_stamp(beton) is None


def test_a_big_file_checked_once_with_the_cli_is_trusted_by_auto(betons, tiny_data, tmp_path, capsys):
    beton = _copy(betons[0], tmp_path / "d")
    said = []
    assert verify_data(_cfg(tmp_path, tiny_data, beton), said.append, auto_max_bytes=1000) == []
    assert f"python -m pipeline.beton --verify {beton} checks it once" in said[-1]
    assert beton_main(["--verify", str(beton)]) == 0 and stamp_path(beton).is_file()
    (r,) = verify_data(_cfg(tmp_path, tiny_data, beton), said.append, auto_max_bytes=1000)
    assert r.ok and r.verified_at and "unchanged since" in said[-1]


def test_a_stamp_that_matches_is_trusted_by_auto_and_always_reads_anyway(betons, tiny_data, tmp_path):
    """The trade, stated: auto trusts a matching stamp (it cannot see bits that rot in place below
    the file system); always re-reads. Here the matching stamp is forged onto a damaged file."""
    good, bad, _ = betons
    beton = _copy(good, tmp_path / "d")
    verify_data(_cfg(tmp_path, tiny_data, beton), lambda *a: None)
    shutil.copy(bad / "train.beton", beton)
    stamp = json.loads(stamp_path(beton).read_text())
    st = beton.stat()
    stamp["identity"]["beton"] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    stamp_path(beton).write_text(json.dumps(stamp))
    (r,) = verify_data(_cfg(tmp_path, tiny_data, beton))
    assert r.ok and r.verified_at
    with pytest.raises(DataError, match="differ from their checksums"):
        verify_data(_cfg(tmp_path, tiny_data, beton, "data.verify=always"))


def test_a_folder_that_cannot_be_written_still_passes_without_a_stamp(betons, tiny_data, tmp_path, monkeypatch):
    import pipeline.beton as pb
    beton = _copy(betons[0], tmp_path / "d")

    def read_only(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(pb, "write_atomic", read_only)  # (tests run as root: chmod would not stop the write)
    (r,) = verify_data(_cfg(tmp_path, tiny_data, beton))
    assert r.ok and not stamp_path(beton).exists()
