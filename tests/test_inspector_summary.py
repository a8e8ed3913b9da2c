"""The runs table and `Run.summary()` count a run the same way (one `runstore.summarize`, issue 13)."""
from __future__ import annotations

import runstore
from inspector.catalog import RunCatalog

CFG = {"epochs": 4, "model": {"name": "mae_vit_micro_patch8_64"},
       "data": {"train_path": "data/imagenette_ffcv/train.beton"}}


def test_catalog_row_and_run_summary_agree(tmp_path):
    with runstore.create(tmp_path / "runs" / "a", CFG) as w:
        w.log_metrics([{"step": s, "epoch": s / 10, "loss": 1.0 / (1 + s), "images_per_s": 100.0 + s}
                       for s in range(25)])
        w.log_eval(epoch=1, kind="knn", top1=0.25)
        w.log_eval(epoch=2, kind="linprobe", top1=0.40)
        w.log_eval(epoch=2, kind="linprobe_full", top1=0.45)
        w.set_status("finished")
    run = runstore.open(tmp_path / "runs" / "a").summary()
    row = RunCatalog(tmp_path / "runs").summary("a")
    assert run["epochs_done"] == row["epochs_done"] == 2 and row["epochs"] == "2/4"
    assert run["last_loss"] == row["last_loss"] == 1.0 / 25
    assert run["images_per_s"] == row["images_per_s"] == 112.0  # median of 100..124
    assert (run["best_linprobe"], run["best_knn"]) == (0.45, 0.25)  # as logged (fractions)
    assert (row["best_linprobe"], row["best_knn"]) == (45.0, 25.0)  # the table shows percent
    assert run["dataset"] == row["dataset"] == "imagenette_ffcv" and row["status"] == run["status"] == "finished"


def test_catalog_row_of_a_run_with_nothing_logged(tmp_path):
    runstore.create(tmp_path / "runs" / "b", {"epochs": 3}).close()
    row = RunCatalog(tmp_path / "runs").summary("b")
    assert (row["model"], row["dataset"], row["epochs"], row["last_loss"], row["best_knn"]) == ("?", "?", "0/3", None, None)
