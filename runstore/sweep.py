"""Sweep tables: one row per finished (or failed) point of an ablation / scaling sweep.

A sweep directory holds `sweep.zarr` (an append-only table like metrics.zarr) and `sweep.json`
(which columns are parameters and which are results). Each point is usually also a normal run
(`run_dir` column). Appends are locked and committed like every table, so a killed sweep driver
loses nothing it logged and can ask `points_done` which points to skip on restart.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from common.files import write_atomic
from common.locks import file_lock
from common.serialize import dump_json, load_json, plain

from .table import TableWriter, read_table

SWEEP_COLUMNS = {"point": "str", "status": "str", "run_dir": "str", "time": "float64"}


def _cell(value: Any, where: str) -> Any:
    value = plain(value, where)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def log_sweep_point(sweep_dir: str | os.PathLike, point: str, params: Mapping[str, Any] | None = None,
                    results: Mapping[str, Any] | None = None, run_dir: str | os.PathLike | None = None,
                    status: str = "done", **info: Any) -> None:
    """Append one point: `params` (what was varied: numbers, strings; bools stored as 1.0/0.0, lists
    as JSON), `results` (top1s, seconds, ...), the point's run directory and a status ("done",
    "failed", ...). `info` is stored with the params' role 'info'. Logging a point again supersedes it."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(point, str) or not point:
        raise ValueError(f"log_sweep_point: point must be a non-empty string, got {point!r}")
    roles = {"params": dict(params or {}), "results": dict(results or {}), "info": info}
    row: dict[str, Any] = {"point": point, "status": str(status),
                           "run_dir": os.fspath(run_dir) if run_dir is not None else "", "time": time.time()}
    for role, values in roles.items():
        for key, value in values.items():
            if key in row:
                raise ValueError(f"log_sweep_point: {role} key {key!r} clashes with another column")
            row[key] = _cell(value, f"{role}.{key}")
    with file_lock(sweep_dir / ".sweep.lock"):
        meta = load_json(sweep_dir / "sweep.json", default={}) or {}
        for role, values in roles.items():
            known = list(meta.get(role, []))
            for key in values:
                other = [r for r in roles if r != role and key in meta.get(r, [])]
                if other:
                    raise ValueError(f"{sweep_dir}: {key!r} is already a {other[0]} column, not a {role} one")
                if key not in known:
                    known.append(key)
            meta[role] = known
        meta.setdefault("created", time.time())
        write_atomic(sweep_dir / "sweep.json", dump_json(meta))
    TableWriter(sweep_dir / "sweep.zarr", SWEEP_COLUMNS, required=("point",)).append_rows([row])


def sweep(sweep_dir: str | os.PathLike, all_records: bool = False) -> pd.DataFrame:
    """The sweep table: the last record of every point, in the order points were first logged
    (all_records=True: every record). `df.attrs` has "params", "results" and "info" column lists."""
    sweep_dir = Path(sweep_dir)
    df = read_table(sweep_dir / "sweep.zarr", SWEEP_COLUMNS)
    if not all_records and len(df):
        first = df.groupby("point", sort=False).cumcount() == 0
        order = {p: i for i, p in enumerate(df.loc[first, "point"])}
        df = df.drop_duplicates(subset=["point"], keep="last")
        df = df.iloc[sorted(range(len(df)), key=lambda i: order[df["point"].iloc[i]])].reset_index(drop=True)
    meta = load_json(sweep_dir / "sweep.json", default={}) or {}
    for role in ("params", "results", "info"):
        df.attrs[role] = list(meta.get(role, []))
    return df


def points_done(sweep_dir: str | os.PathLike, status: str = "done") -> set[str]:
    """Points whose latest record has this status (what a restarted sweep can skip)."""
    df = sweep(sweep_dir)
    return set(df.loc[df["status"] == status, "point"]) if len(df) else set()


def list_sweeps(root: str | os.PathLike) -> list[Path]:
    """Sweep directories (holding sweep.zarr) directly under or at `root`."""
    root = Path(root)
    if (root / "sweep.zarr").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "sweep.zarr").is_dir()) if root.is_dir() else []
