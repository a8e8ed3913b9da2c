"""runstore under real kills and real concurrent readers (subprocesses, SIGKILL, no mocks).

The writer subprocess logs metrics in tiny blocks (so most of its time is spent inside zarr writes),
plus evals and reconstructions, with values that are a pure function of the step: after any kill the
store must open and hold exactly a prefix of what was written, with every value correct.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import runstore

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys, numpy as np, runstore
    run_dir, seed, back = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    w = runstore.create(run_dir, {"epochs": 100, "model": {"name": "crash"}}, resume=True,
                        flush_rows=int(rng.integers(1, 6)), flush_seconds=1e9, heartbeat_seconds=0.0)
    m = runstore.open(run_dir).metrics()
    step = max(0, int(m["step"].iloc[-1]) + 1 - back) if len(m) else 0   # resume a little behind
    w.set_status("running")
    print("ready", step, flush=True)
    while True:
        row = {"step": step, "epoch": step // 50, "loss": 1.0 / (1 + step), "lr": step * 1e-4,
               "images_per_s": 100.0, "data_wait": 0.01}
        if step >= 30:
            row["grad_norm"] = float(step)          # a column that appears mid-run
        w.log_metrics(row)
        if step % 25 == 24:
            w.log_eval(epoch=step // 25, kind="knn", top1=step / 1e4, top5=step / 1e3, k=20)
        if step % 40 == 39:
            e = step // 40
            img = np.full((4, 16, 16, 3), e % 256, np.uint8)
            w.log_reconstructions(e, "val", np.arange(4) + e, img, img, img, img,
                                  np.ones((4, 4), np.uint8), np.full(4, e, np.float32))
        step += 1
        if len(sys.argv) > 4 and step >= int(sys.argv[4]):
            w.close()
            break
""")


def start_writer(script: Path, run_dir: Path, seed: int, back: int = 0, stop: int | None = None):
    args = [sys.executable, str(script), str(run_dir), str(seed), str(back)] + ([str(stop)] if stop else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise AssertionError(f"writer did not start: {line!r} {proc.stderr.read()}")
    return proc


def check_consistent(run_dir: Path) -> int:
    """The store opens and holds a correct prefix; returns the number of steps in the view."""
    r = runstore.open(run_dir)
    raw = r.metrics(raw=True)
    s = raw["step"].to_numpy()
    np.testing.assert_allclose(raw["loss"], 1.0 / (1 + s))
    np.testing.assert_allclose(raw["lr"], s * 1e-4)
    np.testing.assert_array_equal(raw["epoch"], s // 50)
    if "grad_norm" in raw:
        g = raw["grad_norm"].to_numpy()
        assert np.all(np.isnan(g[s < 30])) and np.array_equal(g[s >= 30], s[s >= 30].astype(float))
    m = r.metrics()
    assert m["step"].tolist() == list(range(len(m))), "view must be the contiguous prefix 0..n-1"
    e = r.evals(raw=True)
    np.testing.assert_allclose(e["top1"], (e["epoch"] * 25 + 24) / 1e4)
    assert (e["kind"] == "knn").all() and (len(e) == 0 or (e["k"] == 20).all())
    for epoch in r.reconstruction_epochs("val"):
        rec = r.reconstructions(epoch, "val")
        for key in ("original", "masked", "reconstruction", "pasted"):
            assert rec[key].shape == (4, 16, 16, 3) and (rec[key] == epoch % 256).all()
        assert rec["image_ids"].tolist() == list(range(epoch, epoch + 4)) and (rec["loss"] == epoch).all()
    assert r.status in ("running", "stale", "created")
    assert isinstance(r.config, dict) and r.config["epochs"] == 100
    return len(m)


def test_sigkill_at_random_times_leaves_a_readable_prefix(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run_dir = tmp_path / "run"
    rnd = random.Random(1234)
    lengths, torn = [], 0
    for i in range(5):
        proc = start_writer(script, run_dir, seed=i, back=rnd.randint(0, 7))
        time.sleep(rnd.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        g = zarr.open_group(str(run_dir / "metrics.zarr"), mode="r")
        torn += g["step"].shape[0] != g.attrs["runstore_table"]["rows"] or any(run_dir.rglob("*.partial"))
        # a killed writer is stale at once (its pid is gone), without waiting for the heartbeat timeout
        assert runstore.open(run_dir).status == "stale"
        lengths.append(check_consistent(run_dir))
    print(f"steps visible after each kill: {lengths}; kills that left a torn/uncommitted write: {torn}")
    assert lengths[-1] > 0 and all(b >= a - 8 for a, b in zip(lengths, lengths[1:]))
    proc = start_writer(script, run_dir, seed=99, stop=lengths[-1] + 60)  # resumes and finishes cleanly
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    assert check_consistent(run_dir) == lengths[-1] + 60
    assert not list(run_dir.rglob("*.partial"))


def test_reader_follows_a_live_writer(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run_dir = tmp_path / "run"
    proc = start_writer(script, run_dir, seed=7)
    try:
        seen, deadline = [], time.monotonic() + 4.0
        while time.monotonic() < deadline:
            n = check_consistent(run_dir)  # full consistency check on every read, mid-write
            assert not seen or n >= seen[-1], "committed rows never disappear"
            seen.append(n)
            assert proc.poll() is None, proc.stderr.read()
        assert len(set(seen)) >= 3, f"reader should see the run grow: {seen}"
        assert runstore.open(run_dir).status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    print(f"{len(seen)} reads while writing, last saw {seen[-1]} steps")
