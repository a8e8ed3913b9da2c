"""Atomic file writes: a reader sees the old file or the new one, never a truncated one.

Why: configs, status files, indexes and checkpoints are rewritten while readers look at them and
while the writer may be killed at any instant. Writing a temporary file in the same directory
(`.NAME.<random>.tmp`, the pattern `common.locks.sweep_stale_temps` removes) and `os.replace`-ing
it over the real name makes the switch atomic; fsync makes it survive a power cut.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

# EDQUOT (quota exceeded) is a full disk for the user who hit it
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """A write failed because the file system is full; its text is one line naming the file."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, "no space left on device", os.fspath(path))

    def __str__(self) -> str:
        return f"no space left on device: {self.filename}"


def is_disk_full(exc: BaseException | None) -> bool:
    """True if `exc` or an exception it was raised from is ENOSPC / EDQUOT. torch.save, for one,
    reports a failed write as an opaque RuntimeError with the OSError only as its context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (checkpoints are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_sidecar(path: str | os.PathLike) -> Path:
    """`NAME.sha256` beside `path`: the checksum file checkpoints are published with."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_sha256_sidecar(path: str | os.PathLike, digest: str, name: str | None = None) -> Path:
    """Write `path`'s sidecar atomically in `sha256sum`'s format ("<hex digest>  NAME"; `name`
    defaults to the file's own), so `sha256sum -c NAME.sha256` checks it too."""
    return write_atomic(sha256_sidecar(path), f"{digest}  {name or Path(path).name}\n")


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The digest `path`'s sidecar records (lower-case hex), None when it has no sidecar;
    ValueError naming the sidecar when it holds no SHA-256 digest, OSError when it cannot be read."""
    side = sha256_sidecar(path)
    try:
        text = side.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    recorded = (text.split() or [""])[0].lower()
    if not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise ValueError(f"{side}: holds no SHA-256 digest")
    return recorded


def verify_sha256(path: str | os.PathLike) -> str | None:
    """None if `path` matches the digest its sidecar records, else the reason it does not (no
    sidecar, a sidecar without a digest or that cannot be read, a mismatch), as one phrase."""
    try:
        want = recorded_sha256(path)
    except (ValueError, OSError) as e:  # a sidecar without a digest, or one that cannot be read
        return str(e)
    if want is None:
        return "no .sha256 checksum file beside it"
    got = sha256_file(path)
    if got != want:
        return f"checksum mismatch (file {got[:12]}..., recorded {want[:12]}...)"
    return None


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable. Best effort: some file systems cannot fsync a folder."""
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


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path` (unique per call: concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic_with(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, fsync: bool = True,
                      sync_dir: bool = False) -> Path:
    """Replace `path` with what `write(f)` writes into a binary file object (e.g.
    `lambda f: torch.save(obj, f)`). Nothing is left behind on failure; a full disk raises
    `DiskFullError` ("no space left on device: PATH") whatever the writer wrapped it in.
    `sync_dir`: also fsync the directory, so the rename itself survives a power cut."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # any failure, KeyboardInterrupt included: remove the temp, re-raise
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str, fsync: bool = True, *,
                 sync_dir: bool = False) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) so that no reader ever sees a partial file."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return write_atomic_with(path, lambda f: f.write(data), fsync=fsync, sync_dir=sync_dir)
