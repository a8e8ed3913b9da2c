"""common: the one home of each small shared mechanism (issue 13), on real files, real locks and
real ENOSPC (/dev/full), and importing nothing of the project."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.dotted import NotASectionError, changed_keys, flatten, get_dotted, set_dotted
from common.files import DiskFullError, is_disk_full, write_atomic, write_atomic_with
from common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from common.keys import HARMLESS_ON_RESUME
from common.locks import LockedError, exclusive_lock, file_lock, is_temp_name, sweep_stale_temps
from common.serialize import dump_json, dump_yaml, load_json, load_yaml, plain
from common.values import finite_or_none

REPO = Path(__file__).resolve().parents[1]
DEV_FULL = Path("/dev/full")


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------ files
def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "status.json"
    write_atomic(p, "first")
    write_atomic(p, b"\x00second", fsync=False)
    write_atomic(p, "drítt", sync_dir=True)  # str is written as UTF-8
    assert p.read_text(encoding="utf-8") == "drítt"
    assert _leftovers(tmp_path) == []


def test_write_atomic_with_a_callback_round_trips_torch_save(tmp_path):
    p = tmp_path / "ckpt.pth"
    assert write_atomic_with(p, lambda f: torch.save({"w": torch.arange(5)}, f)) == p
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.arange(5))
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temp(tmp_path):
    p = tmp_path / "config.yaml"
    write_atomic(p, "old: 1\n")

    def half_then_fail(f):
        f.write(b"new: ")
        raise KeyboardInterrupt  # a kill mid-write

    with pytest.raises(KeyboardInterrupt):
        write_atomic_with(p, half_then_fail)
    assert p.read_text() == "old: 1\n" and _leftovers(tmp_path) == []


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full on this system")
def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "ckpt.pth"
    write_atomic(p, b"previous")

    def save_to_full_disk(f):  # torch.save into a file whose writes fail with the kernel's ENOSPC
        with open(DEV_FULL, "wb", buffering=0) as full:
            torch.save({"w": torch.zeros(100_000)}, full)

    with pytest.raises(DiskFullError) as info:
        write_atomic_with(p, save_to_full_disk)
    assert str(info.value) == f"no space left on device: {p}"
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC  # `except OSError` still works
    assert p.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_disk_full_is_found_behind_a_wrapping_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(RuntimeError("other")) and not is_disk_full(OSError(errno.EACCES, "denied"))


# ------------------------------------------------------------------------------------ locks
def test_exclusive_lock_refuses_a_second_holder_naming_the_pid(tmp_path):
    lock = tmp_path / "run" / ".lock"
    with exclusive_lock(lock, tmp_path / "run"):
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(LockedError, match=rf"run: in use by process {os.getpid()}") as info:
            with exclusive_lock(lock):
                pass
        assert info.value.pid == os.getpid()
    with exclusive_lock(lock):  # released: the next holder gets it
        pass


def test_exclusive_lock_is_free_again_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / ".lock"
    code = ("import sys, time; from common.locks import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"process {holder.pid}"):
            with exclusive_lock(lock):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(lock):  # SIGKILL left no stale lock
        pass


def test_file_lock_makes_a_second_holder_wait(tmp_path):
    lock, order = tmp_path / ".store.lock", []
    holding = threading.Event()

    def second():
        holding.wait()
        with file_lock(lock):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with file_lock(lock):
        holding.set()
        time.sleep(0.2)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]


def test_sweep_stale_temps_removes_only_temp_files_of_writers(tmp_path):
    temps = [".ckpt.pth.0123456789ab.tmp", ".final.pth.tmp4242", ".x.tmp"]
    kept = ["ckpt.pth", "notes.tmp", ".hidden", ".tmp4242x"]
    for name in temps + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.tmp").mkdir()
    (tmp_path / ".link.tmp").symlink_to(tmp_path / "ckpt.pth")
    assert sweep_stale_temps(tmp_path, max_age_s=3600) == []  # all younger than an hour
    assert sorted(p.name for p in sweep_stale_temps(tmp_path)) == sorted(temps)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".dir.tmp", ".link.tmp"])
    assert sweep_stale_temps(tmp_path / "missing") == []
    assert is_temp_name(".a.b.tmp") and not is_temp_name("a.tmp")


# ------------------------------------------------------------------------------------ YAML / JSON
def test_plain_turns_numpy_paths_and_tuples_into_data_and_names_what_is_not():
    value = {"a": (np.int64(3), np.float32(0.5)), "b": Path("x/y"), "c": np.bool_(True), "d": torch.tensor(2.0)}
    assert plain(value) == {"a": [3, 0.5], "b": "x/y", "c": True, "d": 2.0}
    with pytest.raises(TypeError, match=r"config\.model\.fn: cannot store builtin_function"):
        plain({"model": {"fn": len}}, "config")


def test_yaml_and_json_round_trip_and_name_the_file_when_broken(tmp_path):
    cfg = {"model": {"name": "m", "betas": (0.9, 0.95)}, "epochs": 3}
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    assert load_yaml(tmp_path / "c.yaml") == {"model": {"name": "m", "betas": [0.9, 0.95]}, "epochs": 3}
    assert list(load_yaml(tmp_path / "c.yaml")) == ["model", "epochs"]  # order kept
    (tmp_path / "r.json").write_text(dump_json({"loss": float("nan"), "n": np.int32(2)}))
    doc = load_json(tmp_path / "r.json")
    assert doc["n"] == 2 and np.isnan(doc["loss"])
    assert load_json(tmp_path / "missing.json", default=[]) == []
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{\"a\": ")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_json(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------ dotted keys
def test_get_and_set_dotted_keys():
    d: dict = {"optim": {"blr": 1e-4}, "epochs": 3}
    assert get_dotted(d, "optim.blr") == 1e-4 and get_dotted(d, "optim.wd", 0.05) == 0.05
    assert get_dotted(d, "epochs.x") is None  # a value, not a section: missing
    set_dotted(d, "model.extra.mask_sampler", "block")
    assert d["model"] == {"extra": {"mask_sampler": "block"}}
    with pytest.raises(NotASectionError, match="'epochs.x': 'epochs' is a value, not a section") as info:
        set_dotted(d, "epochs.x", 1)
    assert (info.value.key, info.value.part) == ("epochs.x", "epochs")


def test_flatten_and_changed_keys():
    cfg = {"model": {"name": "m", "extra": {"target": "pca"}}, "empty": {}, 1: "int key"}
    assert flatten(cfg) == {"model.name": "m", "model.extra.target": "pca", "1": "int key"}
    assert flatten(cfg, leaves=("extra",)) == {"model.name": "m", "model.extra": {"target": "pca"}, "1": "int key"}
    old = {"epochs": 3, "optim": {"blr": 1e-4}, "log": {"every": 1}, "gone": 1, "none": None}
    new = {"epochs": 4, "optim": {"blr": 1e-4}, "log": {"every": 5}, "added": 2}
    assert changed_keys(old, new) == ["added", "epochs", "gone", "log.every", "none"]  # None differs from absent
    assert changed_keys(old, new, ignore=HARMLESS_ON_RESUME) == ["added", "epochs", "gone", "none"]
    assert changed_keys(old, old) == []


# ------------------------------------------------------------------------------------ values and data
def test_finite_or_none():
    assert finite_or_none("2.5") == 2.5 and finite_or_none(np.float32(1)) == 1.0
    assert finite_or_none(float("nan")) is None and finite_or_none(None) is None and finite_or_none("x") is None
    assert finite_or_none(float("inf")) == float("inf")


def test_shared_data_matches_the_copies_not_yet_switched():
    # phase 2 of issue 13 makes these imports of common; until then they must not drift apart
    import model
    import pipeline
    from trainer.config import HARMLESS_PREFIXES
    assert tuple(model.IMAGENET_MEAN) == tuple(pipeline.IMAGENET_MEAN) == IMAGENET_MEAN
    assert tuple(model.IMAGENET_STD) == tuple(pipeline.IMAGENET_STD) == IMAGENET_STD
    assert tuple(HARMLESS_PREFIXES) == HARMLESS_ON_RESUME


def test_common_imports_nothing_of_the_project():
    project = {"pipeline", "model", "trainer", "evals", "runstore", "inspector"}
    code = ("import sys, json, pkgutil, importlib, common\n"
            "for m in pkgutil.iter_modules(common.__path__): importlib.import_module('common.' + m.name)\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert not project & set(json.loads(out.stdout))


def test_is_within_follows_links_and_refuses_loops(tmp_path):
    from common.paths import is_within
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    assert is_within(root / "a", root) and is_within(root, root)
    assert not is_within(root / "out", root) and not is_within(root / "a" / ".." / "..", root)
    assert not is_within(root / "loop", root)


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib
    from common.files import sha256_file
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=999) == hashlib.sha256(data).hexdigest()


def test_sha256_sidecar_round_trip_and_refusals(tmp_path):
    from common.files import recorded_sha256, sha256_file, sha256_sidecar, write_sha256_sidecar
    ckpt = tmp_path / "ckpt-e0001.pth"
    ckpt.write_bytes(b"weights")
    assert recorded_sha256(ckpt) is None  # no sidecar: nothing recorded
    write_sha256_sidecar(ckpt, sha256_file(ckpt))
    assert sha256_sidecar(ckpt).read_text() == f"{sha256_file(ckpt)}  ckpt-e0001.pth\n"  # sha256sum's format
    assert recorded_sha256(ckpt) == sha256_file(ckpt)
    out = subprocess.run(["sha256sum", "-c", sha256_sidecar(ckpt).name], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    write_sha256_sidecar(ckpt, "0" * 64, name="final.pth")
    assert sha256_sidecar(ckpt).read_text() == f"{'0' * 64}  final.pth\n"
    sha256_sidecar(ckpt).write_text("garbage\n")
    with pytest.raises(ValueError, match=r"ckpt-e0001\.pth\.sha256: holds no SHA-256 digest"):
        recorded_sha256(ckpt)
