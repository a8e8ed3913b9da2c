"""Shared pieces of the trainer tests: a tiny generated dataset and a tiny-model config.

The model is a 32-px, 8-px-patch MAE (16 patches) with a 32-wide 1-block encoder: a step costs a
few milliseconds, so the tests spend their time on real process start-up, real files and real
signals rather than on arithmetic.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "seed": 0, "epochs": 4, "deterministic": True, "threads": 1,
    "model": {"name": "mae_vit_pico_patch8_64", "embed_dim": 32, "depth": 1, "num_heads": 2,
              "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
    "data": {"backend": "torch", "image_size": 32, "batch_size": 8, "num_workers": 0},
    "optim": {"blr": 1.0e-2, "warmup_epochs": 1},
    "evals": {"every": 0},
    "recons": {"every": 0},
    "checkpoint": {"every": 1, "keep_last": 2, "every_minutes": 0},
    "log": {"progress": False},
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """40 train / 20 val JPEGs at 32 px from the built-in sample generator."""
    from pipeline.sample import make_sample_dataset
    out = tmp_path_factory.mktemp("tiny_data")
    make_sample_dataset(out, image_size=32, train_per_class=4, val_per_class=2, seed=0)
    return out


def write_config(path: Path, data: Path, run_dir: Path, **sections) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["run_dir"] = str(run_dir)
    cfg["data"].update(train_path=str(data / "train"), val_path=str(data / "val"))
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def pretrain_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "trainer.pretrain", "--config", str(config), *overrides]


def run_pretrain(config: Path, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(pretrain_cmd(config, *overrides), cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # say what the run printed before it ran out of time
        said = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        pytest.fail(f"trainer {' '.join(overrides)} still running after {timeout:.0f}s "
                    f"(load {os.getloadavg()[0]:.1f}); its stderr: {said}")


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / "checkpoints" / "final.pth", map_location="cpu", weights_only=True)["model"]


def max_checkpoint_step(run_dir: Path) -> int:
    from trainer.checkpoint import list_checkpoints
    found = list_checkpoints(Path(run_dir) / "checkpoints")
    return found[0][0] if found else -1
