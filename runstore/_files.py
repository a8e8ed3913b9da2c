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
