"""Path containment after links are followed: the guard that keeps readers inside a runs root."""
from __future__ import annotations

import os
from pathlib import Path


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True if `path`, with every symlink resolved, lies inside `root` (resolved too). False for a
    path that cannot be resolved: unreadable, or a symlink loop (RuntimeError on Python 3.11)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False
