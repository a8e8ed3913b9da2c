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


def test_a_budget_run_is_planned_at_the_epochs_its_budget_fixed(tmp_path):
    """`budget_minutes` makes the config's `epochs` a maximum; the trainer records the epochs it fixed
    in status.json (`budget_epochs`), and a finished budget run reads "18/18", not "18/24". A
    status.json value that is no positive int is ignored (the config's epochs are shown)."""
    cfg = dict(CFG, epochs=24, budget_minutes=12)
    for name, fixed, planned in (("fixed", 18, 18), ("odd", "18", 24), ("zero", 0, 24), ("flag", True, 24)):
        with runstore.create(tmp_path / "runs" / name, cfg) as w:
            w.log_metrics([{"step": s, "epoch": s / 10, "loss": 1.0} for s in range(181)])
            w.set_status("finished", budget_epochs=fixed)
        run = runstore.open(tmp_path / "runs" / name).summary()
        row = RunCatalog(tmp_path / "runs").summary(name)
        assert run["epochs_planned"] == row["epochs_planned"] == planned, name
        assert row["epochs"] == f"18/{planned}", name
