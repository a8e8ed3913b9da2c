"""Run stores for the inspector tests, written by a tiny real run (no tests in this module).

`inspector_runs_root(base)` writes, once per pytest session (cached under `base`):
- `tiny`: a real `trainer.pretrain` run (pico MAE, 64 px, the built-in sample dataset, torch loader,
  2 epochs, kNN + linear probe, reconstructions and checkpoints every epoch);
- `crashed`: a run that died early: config and a few metric rows, status "crashed", no evals, no
  reconstructions, no checkpoints; so the inspector must open half-written stores.
- `not_a_run/`: a stray folder (no config) that must be ignored.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import yaml

TINY_EPOCHS = 2


def _sample_data(base: Path) -> Path:
    from pipeline.sample import make_sample_dataset
    out = base / "sample"
    if not (out / "classes.tsv").exists():
        make_sample_dataset(out, image_size=64, train_per_class=4, val_per_class=3, seed=0,
                            num_workers=1, progress=False)
    return out


def _train_tiny(base: Path, data: Path, runs: Path) -> Path:
    from trainer.pretrain import main
    run_dir = runs / "tiny"
    cfg = {
        "run_dir": str(run_dir), "seed": 0, "epochs": TINY_EPOCHS, "device": "cpu", "precision": "fp32",
        "model": {"name": "mae_vit_pico_patch8_64", "mask_ratio": 0.75, "norm_pix_loss": True},
        "data": {"backend": "torch", "train_path": str(data / "train"), "val_path": str(data / "val"),
                 "image_size": 64, "batch_size": 12, "num_workers": 0},
        "optim": {"blr": 1.5e-4, "warmup_epochs": 1},
        "evals": {"every": 1, "knn": True, "linprobe": True, "max_train": 60, "max_val": 30,
                  "linprobe_epochs": 2, "batch_size": 60},
        "recons": {"every": 1, "num_train": 3, "num_val": 3},
        "checkpoint": {"every": 1, "keep_last": 2},
        "log": {"progress": False, "flush_every": 2},
    }
    cfg_path = base / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--config", str(cfg_path)])
    assert rc == 0, f"tiny training run failed with exit code {rc}"
    return run_dir


def _crashed_run(runs: Path, config: dict) -> Path:
    import runstore
    run_dir = runs / "crashed"
    w = runstore.create(run_dir, {**config, "run_dir": str(run_dir), "epochs": 50})
    w.log_metrics([{"step": i + 1, "epoch": (i + 1) / 10, "loss": 1.2 - 0.01 * i, "lr": 1e-5 * (i + 1),
                    "images_per_s": 300.0 + i, "data_wait": 0.05} for i in range(5)])
    w.set_status("crashed")
    w.flush()
    return run_dir


def inspector_runs_root(base: Path) -> Path:
    """Build (once) and return a runs folder holding `tiny`, `crashed` and a stray folder."""
    base = Path(base)
    runs = base / "runs"
    done = base / ".inspector-runs-done"
    if done.exists():
        return runs
    if runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True)
    data = _sample_data(base)
    tiny = _train_tiny(base, data, runs)
    config = yaml.safe_load((tiny / "config.yaml").read_text())
    _crashed_run(runs, config)
    (runs / "not_a_run").mkdir()
    (runs / "not_a_run" / "notes.txt").write_text("not a run")
    done.write_text("ok")
    return runs


def shared_base(tmp_path_factory) -> Path:
    """One folder per pytest session shared by the inspector test modules (INSPECTOR_TEST_BASE=DIR
    keeps and reuses it across sessions while developing)."""
    if os.environ.get("INSPECTOR_TEST_BASE"):
        base = Path(os.environ["INSPECTOR_TEST_BASE"])
        base.mkdir(parents=True, exist_ok=True)
        return base
    root = tmp_path_factory.getbasetemp()
    base = root / "inspector-shared"
    base.mkdir(exist_ok=True)
    return base


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
