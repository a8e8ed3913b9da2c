"""`status.json`: the run's state plus a heartbeat, so readers can tell running from crashed.

A trainer killed by SIGKILL or a dead node never gets to write "crashed"; readers therefore
report "stale" for a run whose state is "running" but whose heartbeat is older than `stale_after`
seconds, or whose writer process is known to be gone (same host, pid no longer alive).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from common.files import write_atomic
from common.serialize import dump_json, load_json

STATES = ("created", "running", "finished", "crashed", "preempted")
STALE = "stale"
STALE_AFTER_S = 20 * 60.0  # long evals can pass minutes without a metrics flush


def status_path(run_dir: Path) -> Path:
    return Path(run_dir) / "status.json"


def read_status(run_dir: Path) -> dict:
    return load_json(status_path(run_dir), default={}) or {}


def write_status(run_dir: Path, doc: dict) -> None:
    write_atomic(status_path(run_dir), dump_json(doc))


def new_status(state: str, previous: dict | None, message: str | None, info: dict) -> dict:
    if state not in STATES:
        raise ValueError(f"status must be one of {STATES}, got {state!r}")
    now = time.time()
    doc = dict(previous or {})
    doc.update(info)
    doc.update(state=state, message=message, updated=now, heartbeat=now,
               pid=os.getpid(), host=socket.gethostname())
    doc.setdefault("created", now)
    if state == "running" and (previous or {}).get("state") != "running":
        doc["started"] = now
    return doc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_state(doc: dict, stale_after: float = STALE_AFTER_S, now: float | None = None) -> str:
    """The stored state, or "stale" for a "running" run whose writer is evidently gone."""
    state = doc.get("state")
    if not state:
        return "unknown"
    if state != "running":
        return state
    now = time.time() if now is None else now
    beat = doc.get("heartbeat") or doc.get("updated") or 0
    if now - float(beat) > stale_after:
        return STALE
    pid, host = doc.get("pid"), doc.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
        return STALE
    return state


def describe(doc: dict, stale_after: float = STALE_AFTER_S) -> dict[str, Any]:
    """The stored document plus `status` (effective) and `heartbeat_age_s`."""
    out = dict(doc)
    out["status"] = effective_state(doc, stale_after)
    beat = doc.get("heartbeat")
    out["heartbeat_age_s"] = (time.time() - float(beat)) if beat else None
    return out
