"""Advisory inter-process locks (flock) and the clean-up of temp files left by killed writers.

`flock` locks are released by the kernel when the holder dies, so a SIGKILL never leaves a stuck lock.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Iterator

try:  # POSIX only; elsewhere the locks are no-ops (a single writer is assumed)
    import fcntl
except ImportError:  # pragma: no cover - not this project's module: the platform lacks it
    fcntl = None


def is_temp_name(name: str) -> bool:
    """`.NAME.<anything>.tmp` (common.files) or `.NAME.tmpPID` (writers that add their pid)."""
    return name.startswith(".") and (name.endswith(".tmp") or re.search(r"\.tmp\d+$", name) is not None)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock held for a short append+commit, waiting for other holders, so several
    processes (trainer, eval CLIs, sweep drivers) can append to one store without losing rows."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class LockedError(RuntimeError):
    """Another live process holds an exclusive ownership lock (see `exclusive_lock`)."""

    def __init__(self, what: str | os.PathLike, pid: int | None):
        self.what, self.pid = Path(what), pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{what}: in use by {who} (one writer at a time; wait for it to finish or stop it)")


def _holder(fd: int) -> int | None:
    """The pid the holder wrote into the lock file (only to name it in the error)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):  # unreadable or garbage: the holder is unnamed, the lock still holds
        return None


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, what: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold `lock_file` exclusively for the whole `with` block, or raise `LockedError` at once.

    For long-lived ownership (a trainer owning its run directory, `build_ffcv` owning OUT), unlike
    `file_lock`, which waits. The holder's pid is written into the file to name it in the error.
    """
    lock_file = Path(lock_file)
    what = Path(what) if what is not None else lock_file.parent
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(what, _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def sweep_stale_temps(directory: str | os.PathLike, max_age_s: float = 0.0) -> list[Path]:
    """Remove temporary files left by a writer killed mid-write (`.NAME.*.tmp`, `.NAME.tmpPID`).

    Call it only while holding the directory's exclusive lock, so no live writer's temp file goes."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    now = time.time()
    for p in directory.iterdir():
        if not is_temp_name(p.name) or not p.is_file() or p.is_symlink():
            continue
        try:
            if now - p.stat().st_mtime >= max_age_s:
                p.unlink()
                removed.append(p)
        except OSError:  # gone already (another sweeper) or not ours to remove: leave it
            pass
    return removed
