"""runstore readers on damaged stores: a bad chunk costs only its rows of its column, and says so."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import runstore
from runstore.table import CorruptStoreError, TableWriter, read_table

BASE = {"step": "int64", "loss": "float64", "kind": "str"}


def table(tmp_path, n=10, chunk_rows=4):
    path = tmp_path / "t.zarr"
    w = TableWriter(path, BASE, chunk_rows=chunk_rows)
    w.append_rows([{"step": i + 1, "loss": float(i), "kind": f"k{i}"} for i in range(n)])
    return path


def test_only_the_bad_chunk_of_a_float_column_is_lost(tmp_path):
    path = table(tmp_path)
    (path / "loss" / "c" / "1").write_bytes(b"garbage" * 8)  # rows 4..7
    with pytest.warns(RuntimeWarning, match=r"t\.zarr/loss: chunk\(s\) \[1\]"):
        df = read_table(path, BASE)
    assert df["step"].tolist() == list(range(1, 11)) and df["kind"].tolist()[4] == "k4"
    loss = df["loss"].to_numpy()
    assert np.isnan(loss[4:8]).all() and loss[:4].tolist() == [0, 1, 2, 3] and loss[8:].tolist() == [8, 9]
    assert df.attrs["runstore_warnings"] == [w for w in df.attrs["runstore_warnings"] if "loss" in w]
    assert "4 of 10 rows" in df.attrs["runstore_warnings"][0]


def test_rows_of_a_bad_integer_chunk_are_dropped_not_zeroed(tmp_path):
    path = table(tmp_path)
    (path / "step" / "c" / "0").write_bytes(b"garbage" * 8)
    with pytest.warns(RuntimeWarning, match="t.zarr/step"):
        df = read_table(path, BASE)
    assert df["step"].tolist() == list(range(5, 11)) and df["loss"].tolist() == [4, 5, 6, 7, 8, 9]


def test_a_column_without_its_metadata_and_a_store_without_its_own(tmp_path):
    path = table(tmp_path)
    (path / "kind" / "zarr.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="t.zarr/kind: column unreadable"):
        df = read_table(path, BASE)
    assert (df["kind"] == "").all() and df["loss"].notna().all()
    (path / "zarr.json").write_bytes(b"\x00")
    with pytest.raises(CorruptStoreError, match=r"t\.zarr/zarr\.json"):
        read_table(path, BASE)


def test_an_intact_table_warns_nothing(tmp_path):
    path = table(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = read_table(path, BASE)
    assert df.attrs["runstore_warnings"] == [] and len(df) == 10


def test_run_metrics_and_evals_carry_the_warnings(tmp_path):
    w = runstore.create(tmp_path / "r", {"epochs": 1})
    w.log_metrics([{"step": i + 1, "epoch": 0.1 * i, "loss": 1.0} for i in range(3)])
    w.log_eval(1, "knn", top1=0.5)
    w.close()
    (tmp_path / "r" / "evals.zarr" / "top1" / "c" / "0").write_bytes(b"x" * 40)
    run = runstore.open(tmp_path / "r")
    with pytest.warns(RuntimeWarning):
        ev = run.evals()
    assert ev["kind"].tolist() == ["knn"] and ev["top1"].isna().all()
    assert "evals.zarr/top1" in ev.attrs["runstore_warnings"][0]
    assert run.metrics().attrs["runstore_warnings"] == []


def test_corrupt_checkpoint_index_falls_back_to_the_files(tmp_path):
    w = runstore.create(tmp_path / "r", {"epochs": 1})
    ck = tmp_path / "r" / "checkpoints" / "milestone-e0003-s00000030.pth"
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(b"weights")
    w.add_checkpoint(ck, epoch=3, step=30, tag="milestone")
    w.close()
    (tmp_path / "r" / "checkpoints" / "index.json").write_text("[{oops")
    with pytest.warns(RuntimeWarning, match="index.json"):
        df = runstore.open(tmp_path / "r").checkpoints()
    assert df[["epoch", "step", "tag"]].values.tolist() == [[3, 30, "milestone"]]


def test_non_mapping_config_is_refused_with_the_file_named(tmp_path):
    w = runstore.create(tmp_path / "r", {"epochs": 1})
    w.close()
    (tmp_path / "r" / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="config.yaml: expected a mapping"):
        runstore.open(tmp_path / "r").config
