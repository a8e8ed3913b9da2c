"""Sweeps end to end on the built-in sample: real trainer, real run stores, real kill and resume.

A two-point sweep of a tiny MAE (pico encoder at 32 px, a handful of images, 1 epoch) must produce
a table with both points; a sweep killed with SIGKILL after its first point finished must, when
run again, skip that point (one start record, untouched run directory) and finish the rest; the
HTML report of a finished sweep must be self-contained and carry the computed verdicts.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import runstore
from experiments import report, results, sweep
from experiments import store as sweep_store
from pipeline.sample import make_sample_dataset

ROOT = Path(__file__).resolve().parent.parent


def _write_sweep(tmp: Path, data: Path, points: list[dict], evals_every: int = 1) -> Path:
    """A tiny base config and a sweep spec using it; returns the spec path."""
    base = {
        "seed": 0, "epochs": 1, "threads": 1,
        "model": {"name": "mae_vit_pico_patch8_64", "mask_ratio": 0.75, "norm_pix_loss": True},
        "data": {"backend": "torch", "train_path": str(data / "train"), "val_path": str(data / "val"),
                 "image_size": 32, "batch_size": 8, "num_workers": 0},
        "optim": {"blr": 1.5e-3, "warmup_epochs": 0},
        "evals": {"every": evals_every, "knn": True, "linprobe": True, "max_train": 40, "max_val": 20,
                  "linprobe_epochs": 2},
        "recons": {"every": 1, "num_train": 2, "num_val": 2},
        "checkpoint": {"every": 1, "keep_last": 1, "every_minutes": 0},
        "log": {"progress": False},
    }
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"name": "mask_ratio", "title": "tiny test sweep", "paper": "mask_ratio",
            "axis": {"label": "masking ratio", "type": "numeric"},
            "points": points, "presets": {"cpu": {"base": "base.yaml"}}}
    path = tmp / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    return make_sample_dataset(out, image_size=32, train_per_class=4, val_per_class=2, progress=False)


@pytest.fixture(scope="module")
def finished_sweep(sample, tmp_path_factory):
    """A two-point sweep, run in this process; returns (sweep_dir, table)."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = _write_sweep(tmp, sample, [
        {"name": "ratio_50", "value": 0.5, "set": {"model.mask_ratio": 0.5}},
        {"name": "ratio_75", "value": 0.75, "paper": "0.75", "set": {"model.mask_ratio": 0.75}},
    ])
    out = tmp / "out"
    table = sweep.run_sweep(str(spec), out=out, echo=lambda *a: None)
    return out, table


def test_two_point_sweep_runs_end_to_end(finished_sweep):
    out, table = finished_sweep
    assert list(table["point"]) == ["ratio_50", "ratio_75"]
    assert list(table["value"]) == [0.5, 0.75]
    assert (table["status"] == "finished").all(), table[["point", "status"]]
    assert (table["epochs_done"] == 1).all() and (table["epochs"] == 1).all()
    assert table["final_loss"].map(math.isfinite).all()
    assert (table["encoder_params_m"] > 0).all() and (table["params_m"] > table["encoder_params_m"]).all()
    assert (table["s_per_epoch"] > 0).all() and (table["images_per_s"] > 0).all()
    # every point is a normal run store, under the sweep directory, with its own masking ratio
    for name, ratio in (("ratio_50", 0.5), ("ratio_75", 0.75)):
        run = runstore.open(out / name)
        assert run.status == "finished"
        assert run.config["model"]["mask_ratio"] == ratio
    # the sweep table in the store has a start and an end record per point
    recs = sweep_store.records(out)
    assert list(recs["status"]) == ["running", "done", "running", "done"]
    assert set(runstore.sweep(out)["point"]) == {"ratio_50", "ratio_75"}
    # online evals ran after the last epoch and reached the table
    try:
        import evals.online  # noqa: F401
    except ImportError:
        pytest.skip("evals.online not available yet: kNN / linear-probe columns not checked")
    assert table["knn_top1"].map(math.isfinite).all()
    assert table["linprobe_top1"].map(math.isfinite).all()


def test_rerun_of_finished_sweep_trains_nothing(finished_sweep):
    out, _ = finished_sweep
    before = len(sweep_store.records(out))
    table = sweep.run_sweep(str(out.parent / "tiny_sweep.yaml"), out=out, echo=lambda *a: None)
    assert len(sweep_store.records(out)) == before
    assert (table["status"] == "finished").all()


def test_changed_settings_refuse_to_resume(finished_sweep):
    out, _ = finished_sweep
    with pytest.raises(sweep.SweepError, match="ratio_50.*data.batch_size"):
        sweep.run_sweep(str(out.parent / "tiny_sweep.yaml"), out=out, sets=["data.batch_size=4"],
                        echo=lambda *a: None)


def test_report_is_self_contained_with_verdicts(finished_sweep, tmp_path):
    out, table = finished_sweep
    fig = report.sweep_figure(table)
    assert len(fig.data) >= 1
    html_path = report.build_report([out], tmp_path / "r.html")
    text = html_path.read_text()
    assert "ratio_50" in text and "ratio_75" in text
    assert "Fig. 5" in text                          # the paper's reference beside the table
    assert "peaks at a high masking ratio" in text   # the trend, with a computed verdict
    assert "<script src=\"http" not in text and "plotly.js" in text.lower()  # plotly inlined
    assert report.main([str(out), "--out", str(tmp_path / "r2.html")]) == 0
    assert report.main([str(tmp_path), "--out", str(tmp_path / "r3.html")]) == 2


def _records_for(out: Path, point: str):
    recs = sweep_store.records(out)
    return recs[recs["point"] == point] if len(recs) else recs


def test_killed_sweep_resumes_without_rerunning_finished_points(sample, tmp_path):
    spec = _write_sweep(tmp_path, sample, [
        {"name": "first", "value": 0.75, "set": {"model.mask_ratio": 0.75}},
        # long enough that the kill lands while it trains
        {"name": "second", "value": 0.5, "set": {"model.mask_ratio": 0.5, "epochs": 12}},
    ], evals_every=0)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", str(spec), "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the sweep exited (code {proc.returncode}) before it could be killed")
            first = _records_for(out, "first")
            indexed = (out / "second" / "config.yaml").is_file() and len(runstore.open(out / "second").checkpoints())
            if len(first) and "done" in set(first["status"]) and indexed:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the first point did not finish within 120 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # what the inspector sees of the killed sweep: one finished point, one that is not
    assert sweep.find_sweeps(tmp_path) == [out]
    partial = sweep.sweep_table(out).set_index("point")["status"]
    assert partial["first"] == "finished" and partial["second"] != "finished"

    first_files = {p: p.stat().st_mtime_ns for p in (out / "first").rglob("*") if p.is_file()}
    assert runstore.open(out / "first").status == "finished"
    second = runstore.open(out / "second")
    assert second.status != "finished"
    killed_at = int(second.checkpoints()["epoch"].max())
    assert 1 <= killed_at < 12

    table = sweep.run_sweep(str(spec), out=out, echo=lambda *a: None)

    assert (table["status"] == "finished").all(), table[["point", "status"]]
    # the finished point was not trained again: one start record, its files untouched
    assert list(_records_for(out, "first")["status"]) == ["running", "done"]
    assert {p: p.stat().st_mtime_ns for p in (out / "first").rglob("*") if p.is_file()} == first_files
    # the half-done point resumed from its checkpoint instead of starting over
    rec2 = _records_for(out, "second")
    starts = rec2[rec2["status"] == "running"]
    assert len(starts) == 2 and int(starts["epochs_before"].iloc[-1]) >= killed_at
    steps = runstore.open(out / "second").metrics()["step"]
    assert steps.is_monotonic_increasing and steps.iloc[-1] == 12 * 5   # 40 images / batch 8 = 5 steps
    assert int(table.set_index("point").loc["second", "epochs_done"]) == 12


def test_missing_final_evals_are_filled_in(finished_sweep, tmp_path):
    """A run that finished without its final evals (killed during them, then resumed) gets them."""
    from trainer.pretrain import main as pretrain_main
    out, _ = finished_sweep
    base = out.parent / "base.yaml"
    run_dir = tmp_path / "run"
    assert pretrain_main(["--config", str(base), f"run_dir={run_dir}", "evals.every=0"]) == 0
    assert runstore.open(run_dir).evals().empty
    cfg = yaml.safe_load(base.read_text())
    point = sweep.Point(name="run", value=0.75, paper=None, overrides={}, config=cfg)
    assert sweep.ensure_final_evals(point, run_dir, echo=lambda *a: None) is True
    ev = runstore.open(run_dir).evals()
    assert set(ev["kind"]) == {"knn", "linprobe"} and set(ev["epoch"]) == {1}
    assert ev["top1"].between(0, 1).all()
    assert sweep.ensure_final_evals(point, run_dir, echo=lambda *a: None) is False


def test_same_experiment_in_a_sibling_sweep_is_copied_not_trained(finished_sweep, monkeypatch):
    """A point whose experiment already finished in a sibling sweep is copied (its own run store,
    finished, with the donor's numbers); a point that differs in one setting is trained."""
    out, donor_table = finished_sweep
    tmp = out.parent
    spec2 = {"name": "sampler", "title": "second tiny sweep", "paper": "sampler",
             "axis": {"label": "sampler", "type": "category"},
             # mask_sampler random is the model's default: the same experiment as the donor's ratio_75
             "points": [{"name": "random_75", "value": "random 75",
                         "set": {"model.mask_ratio": 0.75, "model.mask_sampler": "random"}},
                        {"name": "grid_75", "value": "grid 75",
                         "set": {"model.mask_ratio": 0.75, "model.mask_sampler": "grid"}}],
             "presets": {"cpu": {"base": "base.yaml"}}}
    spec_path = tmp / "tiny_sampler.yaml"
    spec_path.write_text(yaml.safe_dump(spec2))
    trained = []

    def fake_run_point(point, cfg_path, run_dir, launcher):
        trained.append(point.name)
        return 1   # "failed": only which points would train matters here

    monkeypatch.setattr(sweep, "_run_point", fake_run_point)
    donor_files = {p: p.stat().st_mtime_ns for p in (out / "ratio_75").rglob("*") if p.is_file()}
    out2 = tmp / "out_sampler"
    table = sweep.run_sweep(str(spec_path), out=out2, echo=lambda *a: None).set_index("point")

    assert trained == ["grid_75"]
    assert table.loc["random_75", "status"] == "finished"
    donor = donor_table.set_index("point").loc["ratio_75"]
    for col in ("final_loss", "knn_top1", "linprobe_top1"):
        assert table.loc["random_75", col] == pytest.approx(donor[col])
    assert table.loc["random_75", "s_per_epoch"] > 0          # the donor's timing came along
    copy = runstore.open(out2 / "random_75")
    assert copy.status == "finished" and Path(copy.config["run_dir"]) == out2 / "random_75"
    rec = _records_for(out2, "random_75")
    assert list(rec["status"]) == ["done"] and rec["reused_from"].iloc[-1] == str(out / "ratio_75")
    assert table.loc["random_75", "reused_from"] == str(out / "ratio_75") and table.loc["grid_75", "reused_from"] == ""
    setup = report._setup(sweep_store.read_plan(out2), table.reset_index())
    assert "1 point(s) copied from another sweep: random_75 = " in setup["compute"]
    assert {p: p.stat().st_mtime_ns for p in (out / "ratio_75").rglob("*") if p.is_file()} == donor_files

    # --no-reuse trains it
    trained.clear()
    sweep.run_sweep(str(spec_path), out=tmp / "out_noreuse", reuse=False, echo=lambda *a: None)
    assert trained == ["random_75", "grid_75"]


def test_a_cli_eval_on_other_data_does_not_become_the_points_result(tmp_path):
    """The sweep table reports the point's own online evals (fixed subset, every epoch); a later
    `python -m evals.knn` on the point's checkpoint with other data is kept in the run store but
    must not silently replace the point's kNN number."""
    run = tmp_path / "point"
    with runstore.create(run, {"run_dir": str(run), "epochs": 2}) as w:
        w.log_eval(epoch=2, kind="knn", top1=0.567, settings={"k": 20, "T": 0.07, "pool": "cls"})
        w.log_eval(epoch=2, kind="linprobe", top1=0.6, settings={"pool": "cls", "cached": True})
    runstore.log_eval(run, 2, kind="knn", top1=0.533,
                      settings={"checkpoint": str(run / "checkpoints" / "final.pth"), "data": "/other"})
    ev = runstore.open(run).evals()
    assert len(ev[ev["kind"] == "knn"]) == 2                # both kept
    assert results._last_eval(ev, "knn") == pytest.approx(0.567)
    assert results._last_eval(ev, "linprobe") == pytest.approx(0.6)
    only_cli = ev[ev["top1"] != 0.567]                      # a point with nothing else: use what there is
    assert results._last_eval(only_cli, "knn") == pytest.approx(0.533)


def test_a_missing_data_path_stops_the_sweep_before_any_point(tmp_path):
    """Before: every point started a trainer that failed on the path (each point FAILED, exit 1)."""
    out = tmp_path / "sw"
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", "mask_ratio", "--epochs", "1", "--out", str(out),
                           "--set", f"data.train_path={tmp_path / 'none' / 'train.beton'}"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "data.train_path" in line and str(tmp_path / "none" / "train.beton") in line, line
    assert not out.exists()                      # nothing planned, written or trained
    dry = subprocess.run([sys.executable, "-m", "experiments.sweep", "mask_ratio", "--out", str(out), "--dry-run",
                          "--set", f"data.train_path={tmp_path / 'none' / 'train.beton'}"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert dry.returncode == 0 and "data.train_path" in dry.stdout + dry.stderr, dry.stderr[-2000:]


def test_more_epochs_for_a_trained_point_are_refused_before_any_training(finished_sweep):
    """The trainer refuses a resume whose lr schedule changed (exit 4); the sweep must say so up front,
    naming the point and the key, instead of launching each point into that refusal."""
    out, _ = finished_sweep
    before = len(sweep_store.records(out))
    with pytest.raises(sweep.SweepError, match="ratio_50.*epochs=1.*epochs=2"):
        sweep.run_sweep(str(out.parent / "tiny_sweep.yaml"), out=out, epochs=2, echo=lambda *a: None)
    assert len(sweep_store.records(out)) == before


def test_two_seeds_are_two_runs_of_one_point_and_reuse_keeps_seeds_apart(sample, tmp_path, monkeypatch):
    """--seeds 0,1: each point trains once per seed (POINT/ at seed 0, POINT_seed1/ at seed 1); the
    table has one row per seed under the point's name; a resume with other seeds is refused; a
    sibling sweep reuses a run only at the same seed."""
    spec = _write_sweep(tmp_path, sample, [{"name": "ratio_75", "value": 0.75, "set": {"model.mask_ratio": 0.75}}],
                        evals_every=0)
    out = tmp_path / "out"
    table = sweep.run_sweep(str(spec), out=out, seeds=[0, 1], echo=lambda *a: None)
    assert list(table["point"]) == ["ratio_75", "ratio_75"] and list(table["seed"]) == [0, 1]
    assert [Path(d).name for d in table["run_dir"]] == ["ratio_75", "ratio_75_seed1"]
    assert (table["status"] == "finished").all(), table[["point", "seed", "status"]]
    assert [runstore.open(out / r).config["seed"] for r in ("ratio_75", "ratio_75_seed1")] == [0, 1]
    assert (out / "configs" / "ratio_75_seed1.yaml").is_file()
    assert sweep_store.read_plan(out)["seeds"] == [0, 1]
    recs = runstore.sweep(out)        # the run store's sweep table: one record per run, seed and point named
    assert list(recs["point"]) == ["ratio_75", "ratio_75_seed1"] and list(recs["seed"]) == [0, 1]
    assert list(recs["base_point"]) == ["ratio_75", "ratio_75"]
    assert len(report.per_point(table)) == 1

    before = len(sweep_store.records(out))
    with pytest.raises(sweep.SweepError, match="started with seeds 0,1, now 0"):
        sweep.run_sweep(str(spec), out=out, echo=lambda *a: None)
    assert sweep.main([str(spec), "--out", str(out), "--seeds", "0,2"]) == 2
    assert len(sweep_store.records(out)) == before

    trained = []
    monkeypatch.setattr(sweep, "_run_point", lambda point, *a: trained.append(point.name) or 1)
    sib = sweep.run_sweep(str(spec), out=tmp_path / "out_seed1", seeds=[1, 2], echo=lambda *a: None)
    assert trained == ["ratio_75_seed2"]                      # seed 2 is a new experiment: trained
    assert sib.set_index("seed").loc[1, "reused_from"] == str(out / "ratio_75_seed1")   # not seed 0's run


def test_a_sweep_at_a_fixed_wall_clock_reads_the_epochs_its_budget_fixed(sample, tmp_path):
    """--set budget_minutes=M keeps the trainer's budget (a base's own is dropped, see
    test_sweep_specs): a point may then end before its planned epochs. Its final evals are the ones
    after the epoch the budget fixed: the table reads them and the sweep does not run them again."""
    spec = _write_sweep(tmp_path, sample, [{"name": "ratio_75", "value": 0.75, "set": {"model.mask_ratio": 0.75}}])
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["budget_minutes"] = 0.001   # dropped by the sweep: the point trains its 3 epochs
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    table = sweep.run_sweep(str(spec), out=tmp_path / "planned", epochs=3, echo=lambda *a: None)
    assert list(table["epochs"]) == [3] and list(table["epochs_done"]) == [3]

    out = tmp_path / "budget"
    table = sweep.run_sweep(str(spec), out=out, epochs=3, sets=["budget_minutes=0.001"], echo=lambda *a: None)
    run = runstore.open(out / "ratio_75")
    assert run.status_info()["budget_epochs"] == 2            # the trainer's minimum under a tiny budget
    assert list(table["epochs"]) == [2] and list(table["epochs_done"]) == [2]
    assert table["knn_top1"].notna().all() and table["linprobe_top1"].notna().all()
    point = sweep.plan(sweep.load_spec(str(spec)), "cpu", epochs=3, sets=["budget_minutes=0.001"], sweep_dir=out)[0]
    assert results.missing_final_evals(point, run) == []
    assert sweep.ensure_final_evals(point, out / "ratio_75", echo=lambda *a: None) is False
    assert set(run.evals()["epoch"]) == {2}
