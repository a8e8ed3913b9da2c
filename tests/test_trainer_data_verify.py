"""data.verify: the trainer checks its .beton files against their checksums before any work.

A .beton whose image bytes were damaged (here: a zeroed stretch of its data region) trains without
a word otherwise: FFCV decodes garbage or crashes mid-epoch. With ``data.verify`` (default auto:
files under 2 GiB that have a ``.sums`` beside them) the run stops at start with exit 2 and one
line naming the file and the bad sample indices (``pipeline.beton.verify_beton``).
"""
import shutil

import numpy as np
import pytest

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
