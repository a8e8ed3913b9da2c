"""Crash safety end to end, with real processes and real signals.

- kill -9 at a random step, twice, then resume: bit-identical weights to an uninterrupted run
  (and a corrupted newest checkpoint on the way is detected and skipped);
- SIGTERM: checkpoint, status "preempted", exit 75; the resumed run (with a harmless change)
  finishes and records the change;
- a changed model shape refuses to resume; a non-finite loss stops with exit 3 naming step and
  epoch (with skip_nonfinite, too, once the skips pass their allowed share).
"""
import json
import os
import random
import signal
import subprocess
import time

import pytest
import torch

import runstore
from trainer.pretrain import main

from .test_trainer_helpers import (ROOT, env, final_weights, max_checkpoint_step, pretrain_cmd, run_pretrain,
                                   tiny_data, write_config)  # noqa: F401  (tiny_data is a fixture)

STEPS = 40  # 8 epochs x 5 steps of 8 images: >= 20 steps of slack after the last kill target


def _kill_at(cmd, run_dir, target: int, log) -> None:
    """Start a run and SIGKILL it as soon as a checkpoint at step >= target exists."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while max_checkpoint_step(run_dir) < target:
            assert p.poll() is None, f"run ended (rc {p.returncode}) before reaching step {target}"
            assert time.monotonic() < deadline, "run too slow"
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL


def test_kill9_twice_then_resume_is_bit_exact(tmp_path, tiny_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "killed", epochs=8,
                       checkpoint={"every_steps": 1})
    ref = subprocess.Popen(pretrain_cmd(cfg, f"run_dir={tmp_path / 'ref'}"), cwd=ROOT, env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    first = rng.randint(2, 10)
    second = rng.randint(first + 2, 20)
    with open(tmp_path / "killed.log", "w") as log:
        _kill_at(pretrain_cmd(cfg), tmp_path / "killed", first, log)
        _kill_at(pretrain_cmd(cfg), tmp_path / "killed", second, log)
    # Corrupt the newest checkpoint: the resume must notice and fall back to the one before.
    ckpts = sorted((tmp_path / "killed" / "checkpoints").glob("ckpt-*.pth"))
    raw = bytearray(ckpts[-1].read_bytes())
    raw[-100] ^= 0xFF
    ckpts[-1].write_bytes(bytes(raw))
    done = run_pretrain(cfg, "--resume")
    out = (tmp_path / "killed.log").read_text() + done.stderr
    assert done.returncode == 0, out
    assert f"{ckpts[-1].name} is corrupt" in done.stderr
    assert out.count("resumed from") >= 2, out
    assert ref.wait(timeout=120) == 0, ref.stdout.read()
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "killed")
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"kill steps {first}, {second} (seed {seed}): weights differ in {diff}"
    run = runstore.open(tmp_path / "killed")
    assert run.status == "finished"
    m = run.metrics()
    assert list(m["step"]) == list(range(1, STEPS + 1))  # superseded rows of killed attempts hidden


def test_sigterm_saves_exits_75_and_resumes_with_recorded_change(tmp_path, tiny_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=200,
                       checkpoint={"every": 0}, log={"progress": False, "flush_every": 1})
    p = subprocess.Popen(pretrain_cmd(cfg), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()

    def output(why: str) -> str:  # a failure under load says which wait ran out, and what the run said
        if p.poll() is None:
            p.kill()
        return f"{why} after {time.monotonic() - t0:.0f}s (load {os.getloadavg()[0]:.1f}): {p.communicate()[0]}"
    while not (tmp_path / "run" / "metrics.zarr").exists() or len(runstore.open(tmp_path / "run").metrics()) < 3:
        assert p.poll() is None, output(f"exited {p.returncode} before 3 steps")
        assert time.monotonic() < t0 + 90, output("3 steps not logged")
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(output("no exit within 60 s of SIGTERM"))
    assert p.returncode == 75, out
    assert "preempted" in out
    run = runstore.open(tmp_path / "run")
    assert run.status == "preempted"
    saved = torch.load(max(p for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.pth")), weights_only=True)
    assert saved["step"] >= 3
    # resume with a shorter run (allowed explicitly: the schedule changes) and a logging change: recorded
    stop_at = saved["epoch"] + 1
    done = run_pretrain(cfg, f"epochs={stop_at}", "log.flush_every=7", "--allow-change", "epochs")
    assert done.returncode == 0, done.stderr
    assert "config 'epochs' changed" in done.stderr
    final = torch.load(tmp_path / "run" / "checkpoints" / "final.pth", weights_only=True)
    assert {c["key"] for c in final["config_changes"]} == {"epochs", "log.flush_every"}
    assert final["epoch"] == stop_at and final["batch_in_epoch"] == 0
    # changed model shape: a clear refusal, nothing overwritten
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert main(["--config", str(cfg), "model.embed_dim=48", f"epochs={stop_at + 1}"]) == 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_nonfinite_loss_stops_or_skips(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "nan", epochs=2,
                       optim={"lr": 1.0e30, "warmup_epochs": 0})
    assert main(["--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "step 2, epoch 1" in err, err
    assert not list((tmp_path / "nan" / "checkpoints").glob("*.pth"))  # nothing bad was saved
    # skipping does not rescue a diverged run: past skip_nonfinite_max_share of the steps it stops too
    # (skips within the share: tests/test_trainer_ownership.py)
    assert main(["--config", str(cfg), f"run_dir={tmp_path / 'skip'}", "skip_nonfinite=true"]) == 3
    err = capsys.readouterr().err
    assert "skipped" in err and "skip_nonfinite_max_share" in err, err
    assert json.loads((tmp_path / "skip" / "status.json").read_text())["state"] == "crashed"


def test_resume_redoes_epoch_end_evals_lost_after_the_checkpoint(tmp_path, tiny_data, capsys):
    """Epoch-end evals run after that epoch's checkpoint; a run stopped in between (here: a finished
    run whose evals never ran) gets them on resume instead of silently missing an eval epoch."""
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=2)
    assert main(["--config", str(cfg)]) == 0
    assert runstore.open(tmp_path / "run").evals().empty
    evals = ["evals.every=2", "evals.max_train=40", "evals.max_val=20", "evals.linprobe=false"]
    assert main(["--config", str(cfg), *evals]) == 0
    assert "evals are missing" in capsys.readouterr().err
    ev = runstore.open(tmp_path / "run").evals()
    assert ev["kind"].tolist() == ["knn"] and ev["epoch"].tolist() == [2]
    assert main(["--config", str(cfg), *evals]) == 0       # present now: not run a second time
    assert len(runstore.open(tmp_path / "run").evals()) == 1


def test_last_epoch_as_a_milestone_still_publishes_final(tmp_path, tiny_data):
    # every ImageNet preset lists its last epoch among checkpoint.milestones
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=2, checkpoint={"milestones": [1, 2]})
    assert main(["--config", str(cfg)]) == 0
    d = tmp_path / "run" / "checkpoints"
    assert (d / "milestone-e0001-s00000005.pth").is_file() and (d / "milestone-e0002-s00000010.pth").is_file()
    assert (d / "final.pth").is_file(), sorted(p.name for p in d.iterdir())  # old code: no final.pth
    assert torch.load(d / "final.pth", weights_only=True)["step"] == 10
    assert runstore.open(tmp_path / "run").latest_checkpoint("final") is not None
