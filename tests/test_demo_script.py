"""scripts/demo.py skips stages whose output exists; a sample dataset made by an older version (other
image counts) must be remade, not used silently, and the run trained on it kept, moved aside."""
from __future__ import annotations

import importlib.util
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
