"""scripts/demo.py skips stages whose output exists; a sample dataset made by an older version (other
image counts) must be remade, not used silently, and the run trained on it kept, moved aside."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from pipeline.sample import make_sample_dataset

ROOT = Path(__file__).resolve().parent.parent


def _demo():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_current_or_missing_sample_is_left_alone(tmp_path, monkeypatch):
    demo = _demo()
    assert demo.stale_sample(tmp_path / "nothing") is None
    data = make_sample_dataset(tmp_path / "sample", image_size=16, train_per_class=2, val_per_class=1,
                               progress=False)
    monkeypatch.setattr(demo, "DEFAULT_TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(demo, "DEFAULT_VAL_PER_CLASS", 1)
    assert demo.stale_sample(data) is None
    demo.refresh_stale_sample(data, tmp_path / "beton", tmp_path / "run")
    assert (data / "classes.tsv").exists()


def test_stale_sample_is_remade_and_its_run_moved_aside(tmp_path, capsys):
    demo = _demo()
    data = make_sample_dataset(tmp_path / "sample", image_size=16, train_per_class=1, val_per_class=1,
                               progress=False)
    beton, run = tmp_path / "sample_ffcv", tmp_path / "runs" / "demo"
    beton.mkdir()
    (beton / "train.beton").write_bytes(b"x")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "final.pth").write_bytes(b"weights")
    why = demo.stale_sample(data)
    assert why is not None and "10 train / 10 val" in why and "5,000 / 500" in why
    demo.refresh_stale_sample(data, beton, run)
    assert not data.exists() and not beton.exists() and not run.exists()
    moved = [p for p in run.parent.iterdir() if p.name.startswith("demo.old-")]
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "final.pth").read_bytes() == b"weights"
    out = capsys.readouterr().out
    assert "making it again" in out and moved[0].name in out


def test_stage_4_prints_the_recorded_final_evals_and_recomputes_only_when_missing(tmp_path, monkeypatch,
                                                                                   capsys):
    """The trainer already ran kNN and the cached probe after the last epoch (configs/demo.yaml):
    stage 4 prints those records instead of spending half a minute recomputing them, and runs the
    CLIs when the store lacks them (evals switched off, or not after the last epoch)."""
    import runstore

    demo = _demo()
    calls = []
    monkeypatch.setattr(demo, "stage", lambda title, cmd, skip_if=None: calls.append(cmd[1]))
    run = tmp_path / "runs" / "demo"
    runstore.create(run, {"epochs": 16}).close()
    assert demo.final_evals(run) is None
    for epoch in (8, 16):
        runstore.log_eval(run, epoch, "knn", 0.10 + epoch / 100, 0.6, n_train=5000, n_val=500,
                          settings={"k": 7})
    demo.report_final_evals(run, run / "checkpoints" / "final.pth", tmp_path / "beton")
    assert calls == ["evals.knn", "evals.linprobe"]          # no probe record: both recomputed
    calls.clear()
    runstore.log_eval(run, 8, "linprobe", 0.30, 0.8, n_train=5000, n_val=500)
    assert demo.final_evals(run) is None                     # the probe is not of the final epoch
    runstore.log_eval(run, 16, "linprobe", 0.438, 0.85, n_train=5000, n_val=500)
    found = demo.final_evals(run)
    assert found["knn"]["top1"] == 0.26 and found["linprobe"]["top1"] == 0.438
    capsys.readouterr()
    (tmp_path / "beton").mkdir()
    (tmp_path / "beton" / "classes.json").write_text(json.dumps([{"index": i} for i in range(4)]))
    demo.report_final_evals(run, run / "checkpoints" / "final.pth", tmp_path / "beton")
    out = capsys.readouterr().out   # k and chance from the record and the data (not a fixed "k=20", "10%")
    assert calls == [] and "kNN (k=7) top-1 26.0%" in out and "linear probe top-1 43.8%" in out
    assert "500 val images, 5,000 train, chance 25%" in out and "epoch 16" in out
    assert demo.final_evals(tmp_path / "no_run") is None


def test_demo_recipe_records_both_evals_and_keeps_its_five_minutes():
    """What stage 4 relies on: configs/demo.yaml evaluates kNN and the probe (the trainer also runs
    them after the last epoch, which a budget may move). Its pretraining has a wall-clock budget that
    leaves the sample and FFCV stages (~15 s) and Python's start-up inside the README's five minutes."""
    import yaml

    from trainer.config import load_config

    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    ev = cfg["evals"]
    assert ev["knn"] and ev["linprobe"]
    assert 0 < cfg["budget_minutes"] <= 4.5
    assert load_config(ROOT / "configs" / "demo.yaml").budget_minutes == cfg["budget_minutes"]


def test_pretrain_skips_the_data_check_only_for_betons_built_this_run(tmp_path, monkeypatch):
    """Stage 2 writes the .beton files and their checksums; re-reading every sample seconds later in
    stage 3 costs about 5 s of the budget and finds nothing new. A beton an earlier demo left behind
    is still checked (data.verify=auto)."""
    demo = _demo()
    ran = []

    def fake_stage(title, cmd, skip_if=None):
        ran.append(cmd)
        return not (skip_if is not None and skip_if.exists())

    monkeypatch.setattr(demo, "stage", fake_stage)
    monkeypatch.setattr(demo, "report_final_evals", lambda *a: None)
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    demo.main(["--no-inspector"])
    pretrain = next(c for c in ran if "trainer.pretrain" in c)
    assert "data.verify=never" in pretrain
    (tmp_path / "data" / "sample_ffcv").mkdir(parents=True)
    (tmp_path / "data" / "sample_ffcv" / "train.beton").write_bytes(b"x")
    ran.clear()
    demo.main(["--no-inspector"])
    pretrain = next(c for c in ran if "trainer.pretrain" in c)
    assert not any(a.startswith("data.verify") for a in pretrain)
