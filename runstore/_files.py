"""Small-file helpers: atomic writes, YAML/JSON loading and an advisory inter-process lock.

Why: `config.yaml`, `status.json` and the checkpoint index are rewritten while readers (the
inspector, eval CLIs) may look at them and while the writer may be killed at any instant. Writing
to a temporary file in the same directory and `os.replace`-ing it means a reader sees either the
old or the new file, never a truncated one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

try:  # POSIX only; on other systems the lock is a no-op (single writer assumed)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def write_atomic(path: Path, data: bytes | str, fsync: bool = True) -> None:
    """Replace `path` with `data` so that no reader ever sees a partial file."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def plain(obj: Any, where: str = "value") -> Any:
    """Convert a config/record into YAML/JSON-safe Python (tuples->lists, numpy->python, Path->str)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy/torch 0-d
        return plain(obj.item(), where)
    raise TypeError(f"{where}: cannot store {type(obj).__name__} {obj!r} (use str, numbers, lists, dicts)")


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(plain(obj, "config"), sort_keys=False, default_flow_style=False)


def load_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc


def dump_json(obj: Any) -> str:
    return json.dumps(plain(obj, "record"), indent=1, allow_nan=True)


def load_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file written by `write_atomic`; `default` when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


def finite_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock held for a short append+commit, so several processes
    (trainer, eval CLIs, sweep drivers) can append to one store without losing rows.
    The kernel drops it when the holder dies, so a SIGKILL never leaves a stuck lock."""
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

    def __init__(self, what: Path, pid: int | None):
        self.what, self.pid = Path(what), pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{what}: in use by {who} (one writer at a time; wait for it to finish or stop it)")


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, what: Path | None = None) -> Iterator[None]:
    """Hold `lock_file` exclusively for the whole `with` block, or raise `LockedError` at once.

    For long-lived ownership (a trainer owning its run directory, `build_ffcv` owning OUT), unlike
    `file_lock`, which waits. `flock` is released by the kernel when the holder dies, so a lock is
    never stale after SIGKILL; the holder's pid is written into the file only to name it in the error.
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
            try:
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            except (OSError, ValueError):
                pid = None
            raise LockedError(what, pid) from None
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


def sweep_stale_temps(directory: Path, max_age_s: float = 0.0) -> list[Path]:
    """Remove temporary files left by a writer killed mid-write (`.NAME.*.tmp`, `NAME.tmpPID`).

    Call it only while holding the directory's exclusive lock, so no live writer's temp file goes."""
    import time

    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    now = time.time()
    for p in directory.iterdir():
        n = p.name
        if not p.is_file() or p.is_symlink():
            continue
        if n.startswith(".") and (n.endswith(".tmp") or re.search(r"\.tmp\d+$", n)):
            try:
                if now - p.stat().st_mtime >= max_age_s:
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass
    return removed
