"""Checkpoint files: atomic writes, checksums, retention, and finding the newest good one.

Layout: ``RUN/checkpoints/ckpt-e{epoch:04d}-s{step:08d}.pth`` plus a ``.sha256`` sidecar, ``final.pth``
(a link to the last checkpoint of a finished run), and
``milestone-e{epoch:04d}-s{step:08d}.pth`` (hard links, kept forever). ``epoch`` in the name and
in the file is the epoch to continue in; ``batch_in_epoch`` says how many of its micro-batches are
done (0 at an epoch boundary).

Why this shape:
- A crash at any instant leaves either the old set of files or the new one: the payload goes to a
  temporary file in the same directory, is fsynced, its SHA-256 is written (also atomically) beside
  it, then ``os.replace`` publishes it and the directory is fsynced.
- Disk or copy corruption is caught by the checksum at resume, and the previous checkpoint is used
  with a warning instead of crashing a 1600-epoch run on a bad latest file.
- Everything stored is ``torch.load(weights_only=True)``-safe (RNG states as tensors and lists), so
  ``model.load_checkpoint`` can read these files without unpickling arbitrary objects.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from common import files
# the sidecar check and the checkpoint names have one home each (common.files, runstore.layout:
# the eval CLIs read them too and must not import the trainer); re-exported under their old names
from common.files import sha256_file, verify_sha256 as verify
from model.checkpoint import safe_torch_load  # weights_only: a pickle outside its allow-list is refused
from runstore.layout import CHECKPOINT_NAME_RE as NAME_RE, checkpoint_name, list_checkpoints

from . import distributed

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the run being resumed."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written for a reason outside the program (the disk is full)."""


class NonFiniteWeights(RuntimeError):
    """The weights are not finite at a save: they are not written as a checkpoint (exit 3)."""


def _disk_full_error(path: Path) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(errno.ENOSPC, f"no space left on device writing checkpoint {path} ({free}); "
                                              f"the previous checkpoint is kept. Free space, or lower "
                                              f"checkpoint.keep_last, then rerun to resume")


def _publish(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """``common.files.write_atomic_with`` (temp file, fsync, rename, directory fsync), with a full
    disk named as the trainer's one-line error (free space and checkpoint.keep_last)."""
    try:
        return files.write_atomic_with(path, write, sync_dir=True)
    except files.DiskFullError as e:
        raise _disk_full_error(path) from e


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save ``obj`` to ``path`` atomically, with a ``path.sha256`` sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f) -> None:
        torch.save(obj, f)
        f.flush()
        # the digest of the bytes in the temp file (``f``), published before the rename: a
        # checkpoint that is visible always has its checksum beside it
        files.write_sha256_sidecar(path, sha256_file(f.name))
    return _publish(path, write)


def _publish_as(path: Path, dst: Path) -> Path:
    """``path`` under a second name ``dst`` with its own sidecar, replacing an older ``dst``
    atomically: a hard link, or a copy where links fail (some file systems)."""
    files.write_sha256_sidecar(dst, files.recorded_sha256(path) or sha256_file(path))
    tmp = files.temp_name(dst)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system (or across devices): copy instead
        with open(path, "rb") as src:
            return _publish(dst, lambda f: shutil.copyfileobj(src, f, 1 << 22))
    try:
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)  # only when the rename failed
    files.fsync_dir(dst.parent)
    return dst


def add_milestone(path: Path, epoch: int, step: int) -> Path:
    """Keep ``path`` forever under a milestone name (a hard link, or a copy where links fail)."""
    dst = path.with_name(checkpoint_name(epoch, step, "milestone"))
    if not dst.exists():
        _publish_as(path, dst)
    return dst


def link_as(path: Path, name: str) -> Path:
    """Publish ``path`` under a fixed ``name`` too (``final.pth``), replacing an older one atomically."""
    return _publish_as(path, path.with_name(name))


def load_latest(directory: str | Path, map_location="cpu",
                problems: list | None = None) -> tuple[dict, Path] | None:
    """The newest checkpoint whose checksum verifies (and that unpickles); None if there is none.

    A corrupt, unreadable or refused (unsafe pickle) newer file is skipped with a warning naming it
    and the reason; ``problems`` (if given) collects ``(path, reason)`` for each."""
    for _, _, path in list_checkpoints(directory):
        problem = verify(path)
        if problem is None:
            try:
                return safe_torch_load(path, map_location=map_location), path
            except (ValueError, OSError) as e:  # safe_torch_load: any failure to read the untrusted
                # bytes (truncated zip, bad or unsafe pickle) is a ValueError; a file pruned meanwhile
                # an OSError: the same "not usable, fall back" as a checksum error
                problem = str(e).replace(f"{path}: ", "")
        if problems is not None:
            problems.append((path, problem))
        what = problem if problem.startswith("refused") else f"is corrupt: {problem}"
        warnings.warn(f"checkpoint {path} {what}; falling back to the previous one", stacklevel=2)
    return None


def load_file(path: str | Path, map_location="cpu") -> dict:
    """Load one named checkpoint, verifying its checksum when the sidecar exists."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory: --resume CKPT takes a .pth file (e.g. one in "
                              f"RUN/checkpoints); to resume a run directory's newest checkpoint, give --resume "
                              f"without CKPT and set run_dir")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if files.sha256_sidecar(path).exists() and (problem := verify(path)):
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    try:
        return safe_torch_load(path, map_location=map_location)
    except ValueError as e:  # unsafe pickle (refused, not run) or unreadable: named, one line
        raise CheckpointError(str(e)) from None


def prune(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` regular checkpoints (milestones stay)."""
    regular = [p for _, _, p in list_checkpoints(directory) if p.name.startswith("ckpt-")]
    removed = []
    for p in regular[keep_last:]:
        for f in (p, files.sha256_sidecar(p)):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        removed.append(p)
    return removed


# ---- RNG states, stored as tensors / lists so that weights_only loading works -------------------

def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ---- the checkpointer: when to save, the save itself, retention ---------------------------------

def params_finite(model) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def good_checkpoint_note(directory: Path) -> str:
    """What a stopped run leaves to resume from, for exit-3 messages (saves refuse non-finite
    weights, so every checkpoint in the directory is a good one)."""
    found = list_checkpoints(directory)
    if not found:
        return "No checkpoint was saved yet: rerunning starts from scratch"
    s, e, p = found[0]
    return f"The last good checkpoint is {p} (epoch {e}, step {s}); rerunning the same command resumes from it"


class Checkpointer:
    """One run's checkpoints: when a save is due, the save (every rank calls it: it gathers every
    rank's RNG state; rank 0 writes the file, records it in the run store and prunes), retention.

    ``run`` holds the pieces a checkpoint captures (cfg, info, raw_model, optimizer, scaler,
    loader, eff_batch, writer) and where they go (ckpt_dir); ``state`` (``trainer.resume.TrainState``)
    where training is."""

    def __init__(self, run, saved_step: int = -1):
        self.run = run
        self.dir = run.ckpt_dir
        self.last_step = saved_step  # the step the newest checkpoint holds (-1: none yet)
        self.last_time = time.monotonic()

    def unsaved(self, step: int) -> bool:
        return self.last_step != step

    def poll(self, step: int, stop_requested: bool) -> tuple[bool, bool]:
        """(stop now, a mid-epoch save is due), decided together across ranks: a signal may reach
        one rank only, and each rank's clock says something else about ``every_minutes``."""
        c = self.run.cfg.checkpoint
        time_due = bool(c.every_minutes) and time.monotonic() - self.last_time > 60 * c.every_minutes
        stop, time_due = distributed.any_flags(self.run.info, [stop_requested, time_due])
        return stop, time_due or (bool(c.every_steps) and step % c.every_steps == 0)

    def epoch_end(self, epoch: int) -> tuple[bool, frozenset]:
        """(a save is due after ``epoch`` complete epochs, its tags: "milestone" and/or "final")."""
        c = self.run.cfg.checkpoint
        tags = frozenset(t for t, on in (("milestone", epoch in c.milestones), ("final", epoch == self.run.epochs))
                         if on)
        return bool(c.every and epoch % c.every == 0) or bool(tags), tags

    def save(self, state, tags=frozenset()) -> None:
        """Save ``state`` (every rank calls it); ``tags``: "milestone" keeps a copy forever,
        "final" publishes it as ``final.pth`` too (both for a last epoch that is a milestone)."""
        run = self.run
        if not params_finite(run.raw_model):  # identical on every rank: all stop together
            raise NonFiniteWeights(f"parameters are not finite at step {state.step}, epoch {state.epoch + 1}: not "
                                   f"saving them as a checkpoint; stopping. {good_checkpoint_note(self.dir)}. "
                                   f"Lower optim.blr or set clip_grad")
        rng = distributed.gather_objects(run.info, rng_state(run.info.device))
        if run.info.is_main:
            run.writer.flush()
            path = save_atomic(self._content(state, rng), self.dir / checkpoint_name(state.epoch, state.step))
            shown = "final" if "final" in tags else ("milestone" if "milestone" in tags else None)
            run.writer.add_checkpoint(str(path), epoch=state.epoch, step=state.step, tag=shown)
            if "milestone" in tags:
                add_milestone(path, state.epoch, state.step)
            if "final" in tags:
                link_as(path, "final.pth")
            prune(self.dir, run.cfg.checkpoint.keep_last)
        distributed.barrier(run.info)
        self.last_time, self.last_step = time.monotonic(), state.step

    def _content(self, state, rng: list) -> dict:
        run, B, W = self.run, self.run.cfg.data.batch_size, self.run.info.world_size
        return {
            "model": run.raw_model.state_dict(), "model_config": run.raw_model.config,
            "model_name": run.cfg.model.name, "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "epoch": state.epoch, "step": state.step,
            "batch_in_epoch": state.batch_in_epoch, "samples_in_epoch": state.batch_in_epoch * B * W,
            "batches_per_epoch": len(run.loader), "rng": rng, "config": run.cfg.to_dict(),
            "config_changes": state.config_changes, "world_size": W, "effective_batch": run.eff_batch,
            "nonfinite_skips": state.nonfinite_skips, "budget_epochs": state.budget_epochs,
            "format_version": FORMAT_VERSION,
        }
