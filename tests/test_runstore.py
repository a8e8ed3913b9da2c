"""runstore: write/read round trips on real zarr stores, schema growth, resume views, status, sweeps."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import zarr

import runstore
from runstore.status import read_status, write_status

CFG = {"run_dir": "runs/x", "epochs": 5, "model": {"name": "mae_vit_micro_patch8_64", "mask_ratio": 0.75},
       "data": {"backend": "ffcv", "train_path": "data/sample_ffcv/train.beton"}}


def rows(steps, **extra):
    return [{"step": s, "epoch": s / 10, "loss": 1.0 / (1 + s), "lr": s * 1e-4, "images_per_s": 100.0 + s,
             "data_wait": 0.01, **extra} for s in steps]


def images(n=3, h=8, value=None, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (n, h, h, 3), dtype=np.uint8)
    if value is not None:
        a[:] = value
    return a


def test_empty_run_has_typed_empty_frames(tmp_path):
    w = runstore.create(tmp_path / "r", CFG)
    r = runstore.open(tmp_path / "r")
    m, e, c = r.metrics(), r.evals(), r.checkpoints()
    assert list(m.columns) == list(runstore.METRIC_COLUMNS) and len(m) == 0
    assert m["step"].dtype == np.int64 and m["loss"].dtype == np.float64
    assert list(e.columns) == list(runstore.EVAL_COLUMNS) and len(e) == 0
    assert e["epoch"].dtype == np.int64 and pd.api.types.is_string_dtype(e["kind"])
    assert {"path", "epoch", "step", "tag", "exists"} <= set(c.columns) and len(c) == 0
    assert r.reconstruction_epochs("val") == [] and r.status == "created"
    s = r.summary()
    assert s["model"] == "mae_vit_micro_patch8_64" and s["dataset"] == "sample_ffcv"
    assert s["epochs_planned"] == 5 and s["last_loss"] is None and s["epochs_done"] is None
    assert r.config == CFG
    for name in ("config.yaml", "status.json", "checkpoints", "metrics.zarr", "evals.zarr", "recons.zarr"):
        assert (tmp_path / "r" / name).exists(), name
    w.close()


def test_metrics_buffered_then_committed_and_schema_grows(tmp_path):
    w = runstore.create(tmp_path / "r", CFG, flush_rows=1000, flush_seconds=1e9)
    r = runstore.open(tmp_path / "r")
    w.log_metrics(rows(range(10)))
    assert len(r.metrics()) == 0, "unflushed rows must not be visible"
    w.flush()
    w.log_metrics(rows(range(10, 15), grad_norm=2.5))  # a new column mid-run
    w.log_metrics({"step": 15, "loss": 0.5})  # a single dict, missing columns
    w.flush()
    m = r.metrics()
    assert m["step"].tolist() == list(range(16))
    assert m["grad_norm"].dtype == np.float64
    assert m["grad_norm"].iloc[:10].isna().all() and (m["grad_norm"].iloc[10:15] == 2.5).all()
    assert np.isnan(m["lr"].iloc[15]) and m["loss"].iloc[15] == 0.5
    np.testing.assert_allclose(m["loss"].iloc[:15], 1.0 / (1 + np.arange(15)))
    assert (m["time"] > 1e9).all()
    with pytest.raises(ValueError, match="step"):
        w.log_metrics({"loss": 1.0})
    with pytest.raises(TypeError, match="lr"):
        w.log_metrics({"step": 16, "lr": "fast"})
    with pytest.raises(ValueError, match="integer"):
        w.log_metrics({"step": 1.5})
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.log_metrics(rows([99]))


def test_flush_by_row_count_and_on_close(tmp_path):
    w = runstore.create(tmp_path / "r", CFG, flush_rows=4, flush_seconds=1e9)
    r = runstore.open(tmp_path / "r")
    w.log_metrics(rows(range(3)))
    assert len(r.metrics()) == 0
    w.log_metrics(rows([3]))
    assert len(r.metrics()) == 4
    w.log_metrics(rows([4, 5]))
    w.close()
    assert r.metrics()["step"].tolist() == list(range(6))


def test_resume_dedupes_to_latest_attempt(tmp_path):
    w = runstore.create(tmp_path / "r", CFG)
    w.log_metrics(rows(range(100)))
    w.close()
    w = runstore.create(tmp_path / "r", CFG, resume=True)
    w.log_metrics([{**r, "loss": -1.0} for r in rows(range(50, 80))])  # resumed from step 50
    w.close()
    r = runstore.open(tmp_path / "r")
    m = r.metrics()
    assert m["step"].tolist() == list(range(80))
    assert (m["loss"].iloc[50:] == -1.0).all() and (m["loss"].iloc[:50] > 0).all()
    assert len(r.metrics(raw=True)) == 130
    assert r.summary()["last_loss"] == -1.0 and r.summary()["step"] == 79


def test_create_refuses_a_different_run(tmp_path):
    runstore.create(tmp_path / "r", CFG).close()
    runstore.create(tmp_path / "r", dict(CFG)).close()  # same config: fine
    other = {**CFG, "epochs": 800, "model": {**CFG["model"], "mask_ratio": 0.5}}
    with pytest.raises(runstore.RunExistsError, match="epochs.*model.mask_ratio"):
        runstore.create(tmp_path / "r", other)
    assert runstore.open(tmp_path / "r").config["epochs"] == 5
    w = runstore.create(tmp_path / "r", other, resume=True)
    assert w.config_changes == ["epochs", "model.mask_ratio"]
    w.close()
    r = runstore.open(tmp_path / "r")
    assert r.config["epochs"] == 800
    assert r.status_info()["config_changes"][-1]["keys"] == ["epochs", "model.mask_ratio"]
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(TypeError, match="config.model.bad"):
        runstore.create(tmp_path / "s", {"model": {"bad": object()}})


def test_evals_extras_settings_and_dedupe(tmp_path):
    w = runstore.create(tmp_path / "r", CFG)
    w.log_eval(epoch=0, kind="knn", top1=0.2, top5=0.5, k=20, T=0.07, pool="cls")
    w.log_eval(epoch=1, kind="linprobe", top1=0.3, loss=2.0, seconds=4.5, settings={"lr": 0.1})
    w.log_eval(epoch=1, kind="knn", top1=0.25, top5=0.6, k=20, T=0.07, pool="cls")
    w.log_eval(epoch=1, kind="knn", top1=0.26, top5=0.6, k=20, T=0.07, pool="cls")  # re-run after resume
    runstore.append_eval(tmp_path / "r", epoch=2, kind="linprobe_full", top1=0.4, top5=None)  # another writer
    w.log_eval(epoch=2, kind="knn", top1=0.3)
    r = runstore.open(tmp_path / "r")
    e = r.evals()
    assert e["epoch"].tolist() == [0, 1, 1, 2, 2]
    assert e["kind"].tolist() == ["knn", "linprobe", "knn", "linprobe_full", "knn"]
    assert e.loc[2, "top1"] == 0.26 and e.loc[0, "k"] == 20.0 and np.isnan(e.loc[1, "k"])
    assert json.loads(e.loc[0, "settings"]) == {"pool": "cls"} and json.loads(e.loc[1, "settings"]) == {"lr": 0.1}
    assert e.loc[1, "seconds"] == 4.5 and np.isnan(e.loc[3, "top5"])
    assert len(r.evals(raw=True)) == 6 and len(r.evals(kind="knn")) == 3
    s = r.summary()
    assert s["best_knn"] == 0.3 and s["best_linprobe"] == 0.4
    with pytest.raises(ValueError, match="kind"):
        w.log_eval(epoch=3, kind="", top1=0.1)
    w.close()


def test_reconstructions_round_trip_and_replace(tmp_path):
    w = runstore.create(tmp_path / "r", CFG)
    n, L = 3, 16
    for epoch in (0, 5):
        for split in ("train", "val"):
            w.log_reconstructions(epoch, split, np.arange(n) + 100, images(value=epoch), images(seed=1),
                                  images(seed=2), images(seed=3), np.eye(n, L, dtype=bool),
                                  np.full(n, 0.5 + epoch, np.float32), mask_ratio=0.75)
    w.log_reconstructions(5, "val", ["a.jpg", "b.jpg", "c.jpg"], images(value=55), images(), images(), images(),
                          np.zeros((n, L)), [1.0, 2.0, 3.0])  # re-logged after a resume
    r = runstore.open(tmp_path / "r")
    assert r.reconstruction_epochs("train") == [0, 5] and r.reconstruction_epochs("val") == [0, 5]
    assert r.reconstruction_splits() == ["train", "val"]
    rec = r.reconstructions(0, "train")
    assert rec["original"].dtype == np.uint8 and rec["original"].shape == (n, 8, 8, 3)
    assert (rec["original"] == 0).all() and np.array_equal(rec["masked"], images(seed=1))
    assert rec["mask"].dtype == np.uint8 and np.array_equal(rec["mask"], np.eye(n, L, dtype=np.uint8))
    assert rec["loss"].dtype == np.float32 and rec["image_ids"].tolist() == [100, 101, 102]
    assert rec["attrs"]["mask_ratio"] == 0.75 and rec["epoch"] == 0 and rec["split"] == "train"
    rec = r.reconstructions(5, "val")
    assert (rec["original"] == 55).all() and rec["image_ids"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert rec["loss"].tolist() == [1.0, 2.0, 3.0]
    assert len(list(zarr.open_group(str(tmp_path / "r" / "recons.zarr"), mode="r")["val"].group_keys())) == 2
    with pytest.raises(KeyError, match="epoch 3"):
        r.reconstructions(3, "val")
    with pytest.raises(TypeError, match="uint8"):
        w.log_reconstructions(6, "val", [0], np.zeros((1, 8, 8, 3), np.float32), images(1), images(1),
                              images(1), np.zeros((1, 4)), [0.0])
    with pytest.raises(ValueError, match="mask"):
        w.log_reconstructions(6, "val", [0], images(1), images(1), images(1), images(1), np.zeros((2, 4)), [0.0])
    w.close()


def test_checkpoints_index(tmp_path):
    w = runstore.create(tmp_path / "r", CFG)
    ck = tmp_path / "r" / "checkpoints"
    for e in range(3):
        (ck / f"epoch{e}.pth").write_bytes(b"x" * (e + 1))
        w.add_checkpoint(ck / f"epoch{e}.pth", epoch=e, step=10 * e, tag="milestone" if e == 0 else None)
    (ck / "epoch1.pth").unlink()  # pruned by keep_last
    w.add_checkpoint(ck / "epoch2.pth", epoch=2, step=20, tag="last")  # same file again: replaces
    r = runstore.open(tmp_path / "r")
    c = r.checkpoints()
    assert c["step"].tolist() == [0, 10, 20] and c["exists"].tolist() == [True, False, True]
    assert c["path"].tolist()[0] == str(ck / "epoch0.pth") and c["bytes"].tolist()[2] == 3
    assert r.latest_checkpoint() == ck / "epoch2.pth"
    assert r.latest_checkpoint(tag="milestone") == ck / "epoch0.pth"
    assert json.loads((ck / "index.json").read_text())[0]["path"] == "checkpoints/epoch0.pth"
    w.close()


def test_status_and_staleness(tmp_path):
    w = runstore.create(tmp_path / "r", CFG, heartbeat_seconds=0.0)
    r = runstore.open(tmp_path / "r", stale_after=60)
    w.set_status("running", epoch=1)
    assert r.status == "running" and r.status_info()["epoch"] == 1
    doc = read_status(tmp_path / "r")
    doc["heartbeat"] -= 3600
    write_status(tmp_path / "r", doc)
    assert r.status == "stale"
    w.log_metrics(rows([0]))
    w.flush()  # a flush is a heartbeat
    assert r.status == "running" and r.status_info()["heartbeat_age_s"] < 60
    doc = read_status(tmp_path / "r")
    doc["pid"] = 2 ** 22 + 12345  # a process that does not exist on this host
    write_status(tmp_path / "r", doc)
    assert r.status == "stale"
    w.set_status("finished", epochs_done=5)
    assert r.status == "finished" and r.summary()["epochs_done"] == 5
    with pytest.raises(ValueError, match="status"):
        w.set_status("exploded")
    w.close()
    with pytest.raises(ZeroDivisionError):
        with runstore.create(tmp_path / "r", CFG, resume=True) as w2:
            w2.log_metrics(rows([1]))
            1 / 0
    assert r.status == "crashed" and "ZeroDivisionError" in r.status_info()["message"]
    assert r.metrics()["step"].tolist() == [0, 1], "rows logged before the crash are kept"


def test_uncommitted_tail_is_invisible_and_trimmed(tmp_path):
    """What a kill between 'write arrays' and 'commit' leaves: longer arrays than the committed count."""
    w = runstore.create(tmp_path / "r", CFG)
    w.log_metrics(rows(range(5)))
    w.close()
    g = zarr.open_group(str(tmp_path / "r" / "metrics.zarr"), mode="a")
    g["step"].append(np.array([5, 6], np.int64))
    g["loss"].append(np.array([9.0]))  # torn: columns of different lengths
    (tmp_path / "r" / "metrics.zarr" / "zarr.12345.partial").write_bytes(b"{")  # a killed temp file
    r = runstore.open(tmp_path / "r")
    assert r.metrics()["step"].tolist() == list(range(5))
    w = runstore.create(tmp_path / "r", CFG, resume=True)
    assert not list((tmp_path / "r" / "metrics.zarr").glob("*.partial"))
    w.log_metrics(rows([5]))
    w.close()
    m = r.metrics()
    assert m["step"].tolist() == list(range(6)) and m["loss"].iloc[5] == pytest.approx(1 / 6)


def test_list_runs(tmp_path):
    for name in ("b", "a", "group/c"):
        runstore.create(tmp_path / name, CFG).close()
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("epochs: 1\n")  # no stores yet
    runs = runstore.list_runs(tmp_path)
    assert [r.name for r in runs] == ["a", "b", "c"]
    assert runstore.list_runs(tmp_path / "missing") == []
    assert [r.name for r in runstore.list_runs(tmp_path / "a")] == ["a"]
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        runstore.open(tmp_path / "not_a_run")


def test_sweep_table(tmp_path):
    sw = tmp_path / "sweeps" / "mask_ratio"
    runstore.log_sweep_point(sw, "r0.5", params={"mask_ratio": 0.5}, results={"linprobe_top1": 0.3},
                             run_dir="runs/x")
    runstore.log_sweep_point(sw, "r0.75", params={"mask_ratio": 0.75, "sampler": "block"}, status="failed")
    runstore.log_sweep_point(sw, "r0.75", params={"mask_ratio": 0.75, "sampler": "block"},
                             results={"linprobe_top1": 0.4, "knn_top1": 0.35})
    df = runstore.sweep(sw)
    assert df["point"].tolist() == ["r0.5", "r0.75"] and df["status"].tolist() == ["done", "done"]
    assert df["linprobe_top1"].tolist() == [0.3, 0.4] and df["sampler"].tolist() == ["", "block"]
    assert df.attrs["params"] == ["mask_ratio", "sampler"]
    assert df.attrs["results"] == ["linprobe_top1", "knn_top1"]
    assert len(runstore.sweep(sw, all_records=True)) == 3
    runstore.log_sweep_point(sw, "r0.9", params={"mask_ratio": 0.9, "sampler": 0.5})  # number into a text column
    assert runstore.sweep(sw)["sampler"].tolist() == ["", "block", "0.5"]
    with pytest.raises(TypeError, match="mask_ratio"):
        runstore.log_sweep_point(sw, "r?", params={"mask_ratio": "high"})
    assert runstore.sweep(sw)["point"].tolist() == ["r0.5", "r0.75", "r0.9"]
    assert runstore.points_done(sw) == {"r0.5", "r0.75", "r0.9"}
    assert runstore.list_sweeps(tmp_path / "sweeps") == [sw]
    with pytest.raises(ValueError, match="already a params"):
        runstore.log_sweep_point(sw, "bad", results={"mask_ratio": 1.0})
    empty = runstore.sweep(tmp_path / "none")
    assert len(empty) == 0 and "point" in empty.columns


def test_inspector_never_needs_zarr_types(tmp_path):
    """Readers hand out pandas/numpy/dict only."""
    w = runstore.create(tmp_path / "r", CFG)
    w.log_metrics(rows(range(3)))
    w.log_reconstructions(0, "val", [0], images(1), images(1), images(1), images(1), np.zeros((1, 4)), [0.0])
    w.close()
    r = runstore.open(tmp_path / "r")
    assert isinstance(r.metrics(), pd.DataFrame) and isinstance(r.evals(), pd.DataFrame)
    rec = r.reconstructions(0, "val")
    assert all(isinstance(v, (np.ndarray, int, str, dict)) for v in rec.values())
    json.dumps(r.summary())


def test_metrics_column_subset(tmp_path):
    w = runstore.create(tmp_path / "r", CFG)
    w.log_metrics(rows(range(4), grad_norm=1.0))
    w.close()
    r = runstore.open(tmp_path / "r")
    m = r.metrics(columns=["loss", "grad_norm"])
    assert list(m.columns) == ["step", "loss", "grad_norm"] and len(m) == 4
    with pytest.raises(KeyError, match="nope"):
        r.metrics(columns=["nope"])
