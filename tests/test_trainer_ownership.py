"""One writer per run, signals from the first moment, nothing silently wrong (issue 15, trainer rows).

- a second trainer on a run directory exits 2 naming the owner's pid; the first is unharmed;
- temp files a killed checkpoint write left are swept at start (under the lock);
- SIGTERM right after a resume marks the run "running": checkpoint state kept, exit 75, "preempted";
- skip_nonfinite stops (exit 3) when the weights are not finite after a step, or when more than
  ``skip_nonfinite_max_share`` of the steps were skipped; epoch means count only the steps taken;
- exit-3 messages say whether a good checkpoint exists, and which;
- a full disk during a checkpoint is one line, "no space left on device" and the path;
- a malicious pickle in checkpoints/ is refused at resume with a clear message and runs nothing.
"""
import errno
import io
import json
import os
import signal
import subprocess
import time

import pytest
import torch

import common.files
import runstore
import trainer.pretrain as pretrain
from trainer import checkpoint as ckpt
from trainer.pretrain import main

from .test_trainer_helpers import ROOT, env, pretrain_cmd, tiny_data, write_config  # noqa: F401


def _status(run_dir):
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait_running(p, run_dir, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        doc = _status(run_dir)
        if doc.get("state") == "running" and doc.get("pid") == p.pid:
            return
        assert p.poll() is None, f"exited {p.returncode}: {p.stdout.read()}"
        assert time.monotonic() < deadline, "too slow to start"
        time.sleep(0.002)


def test_second_trainer_on_the_same_run_dir_exits_2_naming_the_owner(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=500, checkpoint={"every": 0})
    first = subprocess.Popen(pretrain_cmd(cfg), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_running(first, tmp_path / "run")
        # the second trainer (in this process: the lock is per open file, so this is a real contender)
        assert main(["--config", str(cfg), "--resume"]) == 2  # old code: both ran, interleaving rows
        err = capsys.readouterr().err
        assert f"process {first.pid}" in err and str(tmp_path / "run") in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert first.poll() is None  # the owner goes on
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=60)
        assert first.returncode == 75, out
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert runstore.open(tmp_path / "run").status == "preempted"
    rows = runstore.open(tmp_path / "run").metrics()
    assert rows["step"].is_monotonic_increasing and rows["step"].is_unique  # one writer's rows


def test_stale_checkpoint_temps_are_swept_at_start(tmp_path, tiny_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    assert main(["--config", str(cfg)]) == 0
    d = tmp_path / "run" / "checkpoints"
    stale = [d / ".ckpt-e0001-s00000009.pth.tmp4242", d / ".final.pth.tmp4242"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    assert main(["--config", str(cfg), "epochs=2", "--allow-change", "epochs"]) == 0
    assert not any(f.exists() for f in stale)


def test_sigterm_right_after_resume_marks_running_is_a_clean_preemption(tmp_path, tiny_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1,
                       recons={"every": 1, "num_train": 4, "num_val": 4})
    assert main(["--config", str(cfg)]) == 0
    p = subprocess.Popen(pretrain_cmd(cfg, "epochs=300", "--allow-change", "epochs"), cwd=ROOT, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_running(p, tmp_path / "run")
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 75, out  # old code: -15, status stuck at "running"
    assert runstore.open(tmp_path / "run").status == "preempted"
    assert "preempted" in out


def test_skip_nonfinite_with_a_diverging_lr_stops(tmp_path, tiny_data, capsys):
    # lr 1e30: the weights stay finite (huge), every later loss is not: the share of skips stops it
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=2, skip_nonfinite=True,
                       optim={"lr": 1.0e30, "warmup_epochs": 0})
    assert main(["--config", str(cfg)]) == 3  # old code: 0, "finished", a final.pth that cannot be used
    err = capsys.readouterr().err
    assert "2 of 3 steps had a non-finite loss" in err and "skip_nonfinite_max_share=0.01" in err, err
    assert "No checkpoint was saved yet" in err, err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pth"))
    assert runstore.open(tmp_path / "run").status == "crashed"


def test_skip_nonfinite_stops_when_a_finite_loss_step_breaks_the_weights(tmp_path, tiny_data, capsys, monkeypatch):
    # a finite loss whose gradient is not (an overflow inside backward): the step writes NaN weights,
    # which no later skip can undo
    real = pretrain.forward_backward

    def nan_grad_at_step_7(model, batches, cfg, info, step, *a, **k):
        loss, wait = real(model, batches, cfg, info, step, *a, **k)
        if step + 1 == 7:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        return loss, wait

    monkeypatch.setattr(pretrain, "forward_backward", nan_grad_at_step_7)
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=3, skip_nonfinite=True)
    assert main(["--config", str(cfg)]) == 3  # old code: 0 and a NaN final.pth
    err = capsys.readouterr().err
    assert "parameters are not finite after step 7, epoch 2" in err, err
    assert "The last good checkpoint is" in err and "ckpt-e0001-s00000005.pth" in err, err
    good = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-e0001-s00000005.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in good["model"].values())
    assert not (tmp_path / "run" / "checkpoints" / "final.pth").exists()


def _nan_loss_at(monkeypatch, bad_steps):
    """Make the loss of optimizer steps ``bad_steps`` (1-based) NaN, as a bad batch would."""
    real = pretrain.forward_backward

    def fake(model, batches, cfg, info, step, *a, **k):
        loss, wait = real(model, batches, cfg, info, step, *a, **k)
        return (loss * float("nan") if step + 1 in bad_steps else loss), wait

    monkeypatch.setattr(pretrain, "forward_backward", fake)


def test_epoch_mean_counts_only_the_steps_taken(tmp_path, tiny_data, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1, skip_nonfinite=True,
                       skip_nonfinite_max_share=1.0)
    _nan_loss_at(monkeypatch, {2, 3, 4, 5})
    assert main(["--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    first = runstore.open(tmp_path / "run").metrics()["loss"].iloc[0]
    assert f"epoch 1/1: loss {first:.4f}" in err, err  # old code: first / 5
    assert "4 non-finite steps skipped" in err


def test_skip_nonfinite_stops_past_the_allowed_share(tmp_path, tiny_data, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=4, skip_nonfinite=True,
                       skip_nonfinite_max_share=0.1)
    _nan_loss_at(monkeypatch, {7, 9})  # 1 of 7 steps is allowed (at least one); 2 of 9 is over 10%
    assert main(["--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "skip_nonfinite_max_share" in err and "2 of 9" in err, err
    assert "ckpt-e0001-s00000005.pth" in err, err  # the good checkpoint it leaves, by name


def test_nonfinite_loss_message_names_the_good_checkpoint(tmp_path, tiny_data, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=3)
    _nan_loss_at(monkeypatch, {8})
    assert main(["--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "step 8, epoch 2" in err and "ckpt-e0001-s00000005.pth" in err and "resume" in err, err


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes (writes raise ENOSPC, as the kernel does)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def writable(self):
        return True

    def fileno(self):
        return self.f.fileno()

    def flush(self):
        if not self.f.closed:
            self.f.flush()

    def close(self):
        super().close()
        self.f.close()


def _fill_disk(monkeypatch, room=2000):
    # checkpoint files (their temps are ".NAME.pth.<hex>.tmp") are written by common.files.write_atomic_with
    real_open = open
    monkeypatch.setattr(common.files, "open", lambda p, mode="r", *a, **k: _FullDisk(real_open(p, mode, *a, **k), room)
                        if "w" in mode and ".pth" in str(p) else real_open(p, mode, *a, **k), raising=False)


def test_disk_full_during_a_checkpoint_is_one_clear_line(tmp_path, tiny_data, capsys, monkeypatch):
    path = tmp_path / "ckpt" / "x.pth"
    _fill_disk(monkeypatch)
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.save_atomic({"w": torch.randn(10000)}, path)
    msg = str(e.value)
    assert "no space left on device" in msg and str(path) in msg and "inline_container" not in msg, msg
    assert not list(path.parent.iterdir())  # no temp file left behind
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    assert main(["--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err and "Traceback" not in err, err
    status = runstore.open(tmp_path / "run").status_info()
    assert status["status"] == "crashed" and "no space left on device" in status["message"]


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_at_resume_and_runs_nothing(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    d = tmp_path / "run" / "checkpoints"
    d.mkdir(parents=True)
    marker = tmp_path / "MARKER"
    evil = d / ckpt.checkpoint_name(1, 5)
    torch.save({"model": {}, "epoch": 1, "step": 5, "payload": _RunsShell(marker)}, evil)
    (d / (evil.name + ".sha256")).write_text(f"{ckpt.sha256_file(evil)}  {evil.name}\n")  # checksum is fine
    assert main(["--config", str(cfg)]) == 4
    err = capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's pickle ran a shell command"
    last = err.strip().splitlines()[-1]
    assert evil.name in last and "system" in last and "refused" in last, err
    assert main(["--config", str(cfg), "--resume", str(evil)]) == 4
    assert not marker.exists()
    assert "system" in capsys.readouterr().err
