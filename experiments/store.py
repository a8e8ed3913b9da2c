"""A sweep directory's files: the plan (ours) and the sweep table (through ``runstore``).

Layout of a sweep directory::

    SWEEP_DIR/
      plan.json          the plan: sweep name, preset, axis, every point's resolved trainer config and
                         the machine it ran on. Written when a sweep starts, checked when it resumes
                         so that a resumed sweep cannot silently mix settings. (Ours: runstore models
                         runs and sweep tables, not sweep plans.)
      configs/POINT.yaml the trainer config each point was started with
      POINT/             each point's run directory (a normal run store, written by the trainer)
      sweep.zarr, sweep.json   the sweep table, written only through ``runstore.log_sweep_point``:
                         one record when a point starts (status "running") and one when it ends
                         ("done" | "failed" | "preempted") with its numbers and wall-clock seconds.
                         A record's ``point`` is the run's name (POINT, or POINT_seedK for a
                         point's further seeds); ``seed`` and ``base_point`` (the point it is a
                         seed of) say which seed of which point it is.

Why both: the run stores hold the truth about each point (status, metrics, evals); the sweep table
adds what only the driver knows (wall-clock per invocation, exit codes, which invocation resumed
what) and is what ``runstore.list_sweeps`` finds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

import runstore
from common.files import write_atomic

PLAN = "plan.json"


class SweepDirError(ValueError):
    """A sweep directory is missing or its plan is unreadable; the message names the file."""


def is_sweep_dir(path) -> bool:
    """True when ``path`` holds a sweep plan."""
    return (Path(path) / PLAN).is_file()


def read_plan(sweep_dir) -> dict:
    """The plan of a sweep directory; SweepDirError naming the file when absent or broken."""
    path = Path(sweep_dir) / PLAN
    if not path.is_file():
        raise SweepDirError(f"{path}: no sweep plan (is {sweep_dir} a sweep directory written by experiments.sweep?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SweepDirError(f"{path}: not valid JSON: {exc}") from None


def write_plan(sweep_dir, plan: dict) -> None:
    """Write plan.json atomically (``common.files.write_atomic``: a kill never leaves half a file)."""
    write_atomic(Path(sweep_dir) / PLAN, json.dumps(plan, indent=2, default=str))


def _clean(d: dict) -> dict:
    """Values runstore's table accepts: NaN/None dropped (missing), numbers and text kept."""
    out = {}
    for k, v in d.items():
        if v is None or (isinstance(v, float) and v != v):
            continue
        out[k] = v
    return out


def _params(value, seed: int | None) -> dict:
    return {"value": value} if seed is None else {"value": value, "seed": int(seed)}


def log_start(sweep_dir, point: str, value, run_dir, seed: int | None = None, **info) -> None:
    """Record that a point's trainer is starting (status 'running')."""
    runstore.log_sweep_point(sweep_dir, point, params=_params(value, seed), results={}, run_dir=run_dir,
                             status="running", **_clean({"event_time": time.time(), **info}))


def log_end(sweep_dir, point: str, value, run_dir, status: str, results: dict, seed: int | None = None,
            **info) -> None:
    """Record how a point's trainer ended, with the numbers of its row."""
    runstore.log_sweep_point(sweep_dir, point, params=_params(value, seed), results=_clean(results),
                             run_dir=run_dir, status=status, **_clean({"event_time": time.time(), **info}))


def records(sweep_dir) -> pd.DataFrame:
    """Every record of the sweep table in write order (empty frame when nothing was logged)."""
    if not (Path(sweep_dir) / "sweep.zarr").exists():
        return pd.DataFrame()
    return runstore.sweep(sweep_dir, all_records=True)
