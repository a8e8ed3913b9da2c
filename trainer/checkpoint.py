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
import hashlib
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

NAME_RE = re.compile(r"^(ckpt|milestone)-e(\d+)-s(\d+)\.pth$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the run being resumed."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written for a reason outside the program (the disk is full)."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or an exception it was raised from is ENOSPC / EDQUOT. torch.save reports a
    failed write as an opaque ``inline_container.cc`` RuntimeError with the OSError only as context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_error(path: Path) -> CheckpointWriteError:
    import shutil
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(errno.ENOSPC, f"no space left on device writing checkpoint {path} ({free}); "
                                              f"the previous checkpoint is kept. Free space, or lower "
                                              f"checkpoint.keep_last, then rerun to resume")


def _load(path: Path, map_location):
    """torch.load(weights_only=True) through the project's one checkpoint reader (model.checkpoint):
    a pickle that needs any global outside its allow-list is refused, never run."""
    from model.checkpoint import safe_torch_load
    return safe_torch_load(path, map_location=map_location)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_name(epoch: int, step: int, kind: str = "ckpt") -> str:
    return f"{kind}-e{epoch:04d}-s{step:08d}.pth"


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save ``obj`` to ``path`` atomically, with a ``path.sha256`` sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        _write_atomic_bytes(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
        os.replace(tmp, path)
    except Exception as e:
        if _disk_full(e):
            raise _disk_full_error(path) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _copy(src: Path, dst: Path) -> None:
    """A copy where hard links fail (some file systems); a full disk is named like in save_atomic."""
    import shutil
    try:
        shutil.copyfile(src, dst)
    except OSError as e:
        dst.unlink(missing_ok=True)
        if _disk_full(e):
            raise _disk_full_error(dst) from e
        raise


def add_milestone(path: Path, epoch: int, step: int) -> Path:
    """Keep ``path`` forever under a milestone name (a hard link, or a copy where links fail)."""
    dst = path.with_name(checkpoint_name(epoch, step, "milestone"))
    if not dst.exists():
        try:
            os.link(path, dst)
        except OSError:
            _copy(path, dst)
        side = path.with_name(path.name + ".sha256").read_text().split()[0]
        _write_atomic_bytes(dst.with_name(dst.name + ".sha256"), f"{side}  {dst.name}\n".encode())
        _fsync_dir(path.parent)
    return dst


def link_as(path: Path, name: str) -> Path:
    """Publish ``path`` under a fixed ``name`` too (``final.pth``), replacing an older one atomically."""
    dst = path.with_name(name)
    tmp = path.with_name(f".{name}.tmp{os.getpid()}")
    try:
        os.link(path, tmp)
    except OSError:
        _copy(path, tmp)
    side = path.with_name(path.name + ".sha256").read_text().split()[0]
    _write_atomic_bytes(dst.with_name(name + ".sha256"), f"{side}  {name}\n".encode())
    os.replace(tmp, dst)
    _fsync_dir(path.parent)
    return dst


def list_checkpoints(directory: str | Path) -> list[tuple[int, int, Path]]:
    """(step, epoch, path) of every checkpoint file in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = NAME_RE.match(p.name)
        if m:
            # at equal step prefer the regular file (sorted first by the kind flag)
            found.append((int(m.group(3)), int(m.group(2)), m.group(1) == "ckpt", p))
    found.sort(key=lambda t: (t[0], t[2]), reverse=True)
    return [(s, e, p) for s, e, _, p in found]


def verify(path: Path) -> str | None:
    """None if ``path`` matches its sidecar checksum, else the reason it does not."""
    side = path.with_name(path.name + ".sha256")
    if not side.exists():
        return "no .sha256 checksum file beside it"
    want = side.read_text().split()[0] if side.read_text().strip() else ""
    got = sha256_file(path)
    if got != want:
        return f"checksum mismatch (file {got[:12]}..., recorded {want[:12]}...)"
    return None


def load_latest(directory: str | Path, map_location="cpu",
                problems: list | None = None) -> tuple[dict, Path] | None:
    """The newest checkpoint whose checksum verifies (and that unpickles); None if there is none.

    A corrupt, unreadable or refused (unsafe pickle) newer file is skipped with a warning naming it
    and the reason; ``problems`` (if given) collects ``(path, reason)`` for each."""
    for _, _, path in list_checkpoints(directory):
        problem = verify(path)
        if problem is None:
            try:
                return _load(path, map_location), path
            except Exception as e:  # truncated zip, bad or unsafe pickle: same treatment as a checksum error
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
    side = path.with_name(path.name + ".sha256")
    if side.exists() and (problem := verify(path)):
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    try:
        return _load(path, map_location)
    except ValueError as e:  # unsafe pickle (refused, not run) or unreadable: named, one line
        raise CheckpointError(str(e)) from None


def prune(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` regular checkpoints (milestones stay)."""
    regular = [p for _, _, p in list_checkpoints(directory) if p.name.startswith("ckpt-")]
    removed = []
    for p in regular[keep_last:]:
        for f in (p, p.with_name(p.name + ".sha256")):
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
