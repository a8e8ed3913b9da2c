"""Reading runs: `runstore.open(run_dir) -> Run` and `runstore.list_runs(root)`.

Everything a reader returns is plain pandas / numpy / dicts, so callers (the inspector, evals,
reports) never touch zarr. Every call re-reads the committed state from disk, so a Run kept open
by a long-lived app follows a trainer that is still writing.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.paths import is_within
from common.serialize import load_json, load_yaml

from . import recons as _recons
from .layout import CHECKPOINT_INDEX, CHECKPOINT_NAME_RE, EVAL_COLUMNS, METRIC_COLUMNS
from .status import STALE_AFTER_S, describe, effective_state, read_status
from .summary import summarize
from .table import read_table

CHECKPOINT_COLUMNS = ["path", "epoch", "step", "tag", "time", "bytes", "exists"]
STORES = ("metrics.zarr", "evals.zarr", "recons.zarr", "status.json")


class OutsideRootError(ValueError):
    """A run's file resolves (through a symlink) to a place outside the runs root: never read."""


def is_run_dir(path: Path) -> bool:
    try:
        return (path / "config.yaml").is_file() and any((path / s).exists() for s in STORES)
    except OSError:  # unreadable folder (permissions, a dangling mount): not a run we can show
        return False


def latest_attempt(steps: np.ndarray) -> np.ndarray:
    """Mask of rows to keep so that steps increase: a row is dropped when a later-written row has
    a step <= its own (a resumed trainer rewrote that part of the curve; keep the last written)."""
    if len(steps) == 0:
        return np.zeros(0, dtype=bool)
    suffix_min = np.minimum.accumulate(steps[::-1])[::-1]
    next_min = np.append(suffix_min[1:], np.iinfo(np.int64).max)
    return steps < next_min


class Run:
    """Read-only view of one run directory (works while a writer appends)."""

    def __init__(self, run_dir: str | os.PathLike, stale_after: float = STALE_AFTER_S,
                 root: str | os.PathLike | None = None):
        self.path = Path(run_dir).absolute()
        # listed under a runs root (list_runs): every file read must resolve inside that root
        self.root = Path(root).resolve() if root is not None else None
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such run directory")
        if not (self.path / "config.yaml").is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.yaml)")
        self.name = self.path.name
        self.stale_after = float(stale_after)
        self._config_key: tuple | None = None
        self._config: dict = {}

    def _file(self, name: str | Path) -> Path:
        """`self.path / name`, refused if a symlink takes it out of the runs root."""
        p = self.path / name
        if self.root is not None and (p.exists() or p.is_symlink()) and not is_within(p, self.root):
            raise OutsideRootError(f"{p}: links outside the runs root {self.root}; not read")
        return p

    # ------------------------------------------------------------------ config and status
    @property
    def config(self) -> dict:
        """The run's config.yaml (re-read when the file changes, e.g. after a resume)."""
        p = self._file("config.yaml")
        st = p.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._config_key:
            config = load_yaml(p) or {}
            if not isinstance(config, dict):  # e.g. a bare list or string: nothing a run could have written
                raise ValueError(f"{p}: expected a mapping of settings, found {type(config).__name__}")
            self._config = config
            self._config_key = key
        return self._config

    @property
    def status(self) -> str:
        """"created" | "running" | "finished" | "crashed" | "preempted" | "stale" (running by the
        file, but no heartbeat for `stale_after` s or its process is gone) | "unknown"."""
        return effective_state(self._status(), self.stale_after)

    def status_info(self) -> dict:
        """status.json as stored, plus `status` (as above) and `heartbeat_age_s`."""
        return describe(self._status(), self.stale_after)

    def _status(self) -> dict:
        self._file("status.json")  # refuses a status.json linked out of the runs root
        doc = read_status(self.path)
        if not isinstance(doc, dict):
            raise ValueError(f"{self.path / 'status.json'}: expected a JSON object, found {type(doc).__name__}")
        return doc

    # ------------------------------------------------------------------ tables
    def metrics(self, raw: bool = False, columns: list[str] | None = None) -> pd.DataFrame:
        """Per-step metrics, one row per step, steps increasing (rows superseded by a resumed
        trainer removed). Columns: step (int64), epoch (float64, epochs elapsed: 2.5 = half-way
        through the third), loss, lr, images_per_s, data_wait, time (unix seconds), then extras. raw=True: every committed row in write order.
        columns: read only these (`step` is always included)."""
        if columns is not None:
            columns = ["step"] + [c for c in columns if c != "step"]
        df = read_table(self._file("metrics.zarr"), METRIC_COLUMNS, columns)
        if raw:
            return df
        problems = df.attrs.get("runstore_warnings", [])
        keep = latest_attempt(df["step"].to_numpy(dtype=np.int64))
        df = df[keep].reset_index(drop=True)
        df.attrs["runstore_warnings"] = problems
        return df

    def evals(self, kind: str | None = None, raw: bool = False) -> pd.DataFrame:
        """Evaluation records sorted by epoch. Columns: epoch (int64), kind (str), top1, top5, loss,
        seconds, settings (JSON str), time, then extras. For the same (epoch, kind, settings) only
        the last written is kept unless raw=True."""
        df = read_table(self._file("evals.zarr"), EVAL_COLUMNS)
        problems = df.attrs.get("runstore_warnings", [])
        if not raw and len(df):
            df = df.drop_duplicates(subset=["epoch", "kind", "settings"], keep="last")
            df = df.sort_values("epoch", kind="stable").reset_index(drop=True)
        if kind is not None:
            df = df[df["kind"] == kind].reset_index(drop=True)
        df.attrs["runstore_warnings"] = problems
        return df

    def checkpoints(self) -> pd.DataFrame:
        """Recorded checkpoints sorted by step: path (absolute str), epoch, step, tag, time, bytes,
        exists (the file is still there: old ones are pruned by the trainer).

        Without a readable index (deleted, or garbage) the list is rebuilt from the files in
        `checkpoints/`, so a run whose index was lost still offers its checkpoints."""
        try:
            entries = load_json(self._file(CHECKPOINT_INDEX), default=None)
        except ValueError as exc:
            warnings.warn(f"{exc}; listing the checkpoint files instead", RuntimeWarning, stacklevel=2)
            entries = None
        if entries is None:
            return self._checkpoints_from_files()
        rows = []
        for e in entries or []:
            p = Path(e["path"])
            p = p if p.is_absolute() else self.path / p
            rows.append({"path": str(p), "epoch": int(e.get("epoch", -1)), "step": int(e.get("step", -1)),
                         "tag": e.get("tag"), "time": float(e.get("time") or math.nan),
                         "bytes": float(e["bytes"]) if e.get("bytes") is not None else math.nan,
                         "exists": p.exists()})
        df = pd.DataFrame(rows, columns=CHECKPOINT_COLUMNS)
        if not rows:
            return df.astype({"path": "str", "epoch": "int64", "step": "int64", "tag": "object",
                              "time": "float64", "bytes": "float64", "exists": "bool"})
        return df.sort_values(["step", "time"], kind="stable").reset_index(drop=True)

    def _checkpoints_from_files(self) -> pd.DataFrame:
        """Checkpoint rows from the `.pth` files themselves (epoch and step from the trainer's names;
        `final.pth` takes them from the checkpoint it is a link of; other names get -1)."""
        d = self.path / "checkpoints"
        try:
            files = sorted(p for p in d.iterdir() if p.suffix == ".pth" and not p.name.startswith(".")
                           and p.is_file())
        except OSError:  # no checkpoints folder yet
            files = []
        rows = []
        for p in files:
            m = CHECKPOINT_NAME_RE.match(p.name)
            epoch, step = (int(m.group(2)), int(m.group(3))) if m else (-1, -1)
            tag = "milestone" if m and m.group(1) == "milestone" else ("final" if p.name == "final.pth" else None)
            st = p.stat()
            rows.append({"path": str(p), "epoch": epoch, "step": step, "tag": tag, "time": st.st_mtime,
                         "bytes": float(st.st_size), "exists": True, "_ino": (st.st_dev, st.st_ino)})
        by_ino = {r["_ino"]: r for r in rows if r["step"] >= 0}
        for r in rows:
            if r["step"] < 0 and r["_ino"] in by_ino:  # final.pth is a hard link of the last checkpoint
                r["epoch"], r["step"] = by_ino[r["_ino"]]["epoch"], by_ino[r["_ino"]]["step"]
        df = pd.DataFrame([{k: v for k, v in r.items() if k != "_ino"} for r in rows], columns=CHECKPOINT_COLUMNS)
        df = df.astype({"path": "str", "epoch": "int64", "step": "int64", "tag": "object",
                        "time": "float64", "bytes": "float64", "exists": "bool"})
        return df.sort_values(["step", "time", "path"], kind="stable").reset_index(drop=True)

    def latest_checkpoint(self, tag: str | None = None) -> Path | None:
        """The existing checkpoint with the highest step (optionally with this tag), or None."""
        df = self.checkpoints()
        df = df[df["exists"]]
        if tag is not None:
            df = df[df["tag"] == tag]
        return Path(df["path"].iloc[-1]) if len(df) else None

    # ------------------------------------------------------------------ reconstructions
    def reconstruction_splits(self) -> list[str]:
        return _recons.splits(self._file("recons.zarr"))

    def reconstruction_epochs(self, split: str = "val") -> list[int]:
        """Epochs with stored reconstructions for `split`, ascending."""
        return _recons.epochs(self._file("recons.zarr"), split)

    def reconstructions(self, epoch: int, split: str = "val") -> dict[str, Any]:
        """dict: image_ids (N), original / masked / reconstruction / pasted (uint8 N x H x W x 3),
        mask (uint8 N x L, 1 = masked), loss (float32 N), epoch, split, attrs. KeyError if absent."""
        return _recons.read(self._file("recons.zarr"), epoch, split)

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """One row for a runs table: name, path, status, model, dataset, epochs_done, epochs_planned,
        step, last_loss, best_linprobe, best_knn, images_per_s, params, updated."""
        info = self.status_info()
        row = summarize(self.config, self.metrics(columns=["epoch", "loss", "images_per_s"]), self.evals(), info)
        if info.get("epochs_done") is not None:  # the trainer's own count wins over the metrics' epochs
            row["epochs_done"] = info["epochs_done"]
        return {"name": self.name, "path": str(self.path), "status": info["status"], **row,
                "params": info.get("params") or info.get("num_params"), "updated": info.get("heartbeat")}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def open(run_dir: str | os.PathLike, stale_after: float = STALE_AFTER_S) -> Run:  # noqa: A001
    """Open a run read-only (safe while its trainer writes)."""
    return Run(run_dir, stale_after=stale_after)


def list_runs(root: str | os.PathLike, max_depth: int = 4) -> list[Run]:
    """Runs under `root` (a directory with config.yaml and a store), sorted by path; searched up to
    `max_depth` levels down, not descending into runs or hidden folders. `root` may itself be a run.

    Never leaves `root`: a symlinked folder is followed only if it resolves inside `root` (a link
    to `/` or to another user's runs lists nothing), and each run is listed once, under its real
    path, however many links lead to it (links that loop back are harmless). The Runs returned
    refuse to read files that links take outside `root`."""
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(d: Path, depth: int) -> None:
        real = d.resolve()
        if real in seen or not is_within(real, root):
            return
        seen.add(real)
        if is_run_dir(real):
            found.append(real)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(c for c in real.iterdir() if c.is_dir())
        except OSError:
            return
        for c in children:
            if not c.name.startswith(".") and not c.name.endswith(".zarr") and c.name != "checkpoints":
                walk(c, depth + 1)

    walk(root, 0)
    return [Run(p, root=root) for p in sorted(found)]
