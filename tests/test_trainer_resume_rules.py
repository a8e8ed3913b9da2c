"""Resume continues exactly or refuses (issue 12).

A checkpoint taken mid-epoch with one batch layout (per-process batch x accumulation x processes)
and resumed with another:
- the same global batch: the run continues at the exact sample and ends at the same optimizer step,
  with the same per-step losses (up to float summation order) as the uninterrupted run;
- a different global batch: exit 4 naming the keys, unless ``--allow-change`` names them, and then
  the trainer says what changes.
Changing the schedule (epochs, warm-up, blr, lr, min_lr) on resume is refused the same way.
"""
import shutil

import numpy as np
import pytest
import torch
import yaml

import runstore
from trainer.pretrain import main

from .test_trainer_helpers import final_weights, run_pretrain, tiny_data, write_config  # noqa: F401

# 40 images, batch 2 x accum 2 = 4 per step: 10 steps per epoch, 20 in all.
STEPS_PER_EPOCH, EPOCHS = 10, 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """An uninterrupted batch 2 x accum 2 run with a checkpoint every 3 steps, all kept."""
    d = tmp_path_factory.mktemp("ref")
    cfg = write_config(d / "c.yaml", tiny_data, d / "ref", epochs=EPOCHS,
                       optim={"accum_steps": 2, "warmup_epochs": 1},
                       checkpoint={"every_steps": 3, "keep_last": 50})
    doc = yaml.safe_load(cfg.read_text())
    doc["data"]["batch_size"] = 2  # (write_config's own ``data`` argument is the image folder)
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["--config", str(cfg)]) == 0
    return cfg, d / "ref"


def _from_mid_epoch(ref_dir, dst, step=15):
    """A run directory holding only the reference's checkpoint at ``step`` (mid-epoch 2)."""
    (dst / "checkpoints").mkdir(parents=True)
    src = next((ref_dir / "checkpoints").glob(f"ckpt-*-s{step:08d}.pth"))
    for f in (src, src.with_name(src.name + ".sha256")):
        shutil.copy(f, dst / "checkpoints" / f.name)
    saved = torch.load(src, weights_only=True)
    assert saved["batch_in_epoch"] == 2 * (step - STEPS_PER_EPOCH)  # micro-batches of 2, mid-epoch
    return dst


def test_same_global_batch_new_layout_continues_at_the_exact_sample(reference, tmp_path):
    cfg, ref_dir = reference
    run = _from_mid_epoch(ref_dir, tmp_path / "resumed")
    done = run_pretrain(cfg, f"run_dir={run}", "data.batch_size=4", "optim.accum_steps=1")
    assert done.returncode == 0, done.stderr
    final = torch.load(run / "checkpoints" / "final.pth", weights_only=True)
    assert final["step"] == EPOCHS * STEPS_PER_EPOCH, done.stderr  # old code: 18 (skipped 2x the batches)
    ref_m = runstore.open(ref_dir).metrics().set_index("step")["loss"]
    new_m = runstore.open(run).metrics().set_index("step")["loss"]
    steps = list(range(16, EPOCHS * STEPS_PER_EPOCH + 1))
    assert list(new_m.index) == steps
    # the same images and masks per step; only the summation order of the micro-batches differs
    np.testing.assert_allclose(new_m.loc[steps].to_numpy(), ref_m.loc[steps].to_numpy(), rtol=1e-4)
    a, b = final_weights(ref_dir), final_weights(run)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_changed_global_batch_mid_epoch_is_refused_naming_the_keys(reference, tmp_path):
    cfg, ref_dir = reference
    run = _from_mid_epoch(ref_dir, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    done = run_pretrain(cfg, f"run_dir={run}", "data.batch_size=4", "optim.accum_steps=2")
    assert done.returncode == 4, done.stderr
    err = done.stderr
    assert "data.batch_size" in err and "effective batch" in err and "--allow-change" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing written


def test_changed_global_batch_allowed_explicitly_says_what_changes(reference, tmp_path):
    cfg, ref_dir = reference
    run = _from_mid_epoch(ref_dir, tmp_path / "run")
    done = run_pretrain(cfg, f"run_dir={run}", "data.batch_size=4", "optim.accum_steps=2",
                        "--allow-change", "data.batch_size")
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "effective batch changes 4 -> 8" in err and "lr " in err, err
    final = torch.load(run / "checkpoints" / "final.pth", weights_only=True)
    # 20 of epoch 2's 40 samples were done: resume after step 2 of 5 (8 per step), 4 samples seen twice
    assert final["step"] == 15 + 3 and final["epoch"] == EPOCHS, err


@pytest.mark.parametrize("override, key", [("epochs=3", "epochs"), ("optim.warmup_epochs=2", "optim.warmup_epochs"),
                                           ("optim.blr=2e-2", "optim.blr"), ("optim.lr=1e-3", "optim.lr")])
def test_schedule_changes_on_resume_are_refused_unless_allowed(reference, tmp_path, capsys, override, key):
    cfg, ref_dir = reference
    run = _from_mid_epoch(ref_dir, tmp_path / "run")
    assert main(["--config", str(cfg), f"run_dir={run}", override]) == 4
    err = capsys.readouterr().err
    assert key in err and "schedule" in err and f"--allow-change {key}" in err, err
    assert len(list((run / "checkpoints").glob("ckpt-*.pth"))) == 1
    if key == "epochs":  # allowed explicitly: trains on, the change recorded in the checkpoint
        assert main(["--config", str(cfg), f"run_dir={run}", override, "--allow-change", key]) == 0
        final = torch.load(run / "checkpoints" / "final.pth", weights_only=True)
        assert final["epoch"] == 3 and {c["key"] for c in final["config_changes"]} >= {"epochs"}


def test_resumed_under_two_processes_with_the_same_global_batch_continues_exactly(reference, tmp_path):
    """1 process x batch 2 x accum 2 -> 2 processes (gloo) x batch 2 x accum 1, mid-epoch."""
    import subprocess
    import sys

    from .test_trainer_helpers import ROOT, env
    cfg, ref_dir = reference
    run = _from_mid_epoch(ref_dir, tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "trainer.pretrain", "--config", str(cfg), f"run_dir={run}", "optim.accum_steps=1"]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "world_size 1 -> 2" in done.stderr and "same effective batch 4" in done.stderr, done.stderr
    final = torch.load(run / "checkpoints" / "final.pth", weights_only=True)
    assert final["step"] == EPOCHS * STEPS_PER_EPOCH and final["world_size"] == 2
    steps = list(range(16, EPOCHS * STEPS_PER_EPOCH + 1))
    ref_m = runstore.open(ref_dir).metrics().set_index("step")["loss"]
    new_m = runstore.open(run).metrics().set_index("step")["loss"]
    np.testing.assert_allclose(new_m.loc[steps].to_numpy(), ref_m.loc[steps].to_numpy(), rtol=1e-4)


def test_plan_names_the_world_size_when_processes_change_the_global_batch():
    from trainer.config import load_config
    from trainer.resume import ResumeError, plan
    old = load_config(None, ["data.batch_size=4"]).to_dict()
    state = {"config": old, "batch_in_epoch": 3, "samples_in_epoch": 12, "world_size": 1, "effective_batch": 4}
    with pytest.raises(ResumeError, match=r"world_size 1 -> 2.*--allow-change world_size"):
        plan(state, old, 2, "x.pth")
    pos = plan(state, old, 2, "x.pth", allow={"world_size"})  # 12 samples // 8 per step: 1 step, 4 repeated
    assert pos.batch_in_epoch == 1 and "4 of the 12 samples" in pos.notes[0]
    same = load_config(None, ["data.batch_size=2"]).to_dict()
    assert plan(state, same, 2, "x.pth").batch_in_epoch == 3  # 12 samples = step 3 of 4 per step
