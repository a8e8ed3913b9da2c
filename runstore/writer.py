"""Writing one run: `runstore.create(run_dir, config) -> RunWriter`.

The trainer logs a metrics row every step; writing each to zarr would cost more than the step on
small models, so rows are buffered and written in blocks (every `flush_rows` rows or `flush_seconds`
seconds, and at flush()/close()/interpreter exit). Evals, reconstructions, checkpoints and status
are rare and written at once. What a kill can lose is at most the unflushed metrics block.
"""
from __future__ import annotations

import atexit
import json
import numbers
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from common.dotted import changed_keys
from common.files import write_atomic
from common.locks import file_lock
from common.serialize import dump_json, dump_yaml, load_json, load_yaml, plain

from . import recons as _recons
from .layout import CHECKPOINT_INDEX, EVAL_COLUMNS, METRIC_COLUMNS
from .reader import Run
from .status import new_status, read_status, write_status
from .table import TableWriter



class RunExistsError(FileExistsError):
    """`create` found a different run in the directory and `resume` was not given."""


def _normalised(config: Mapping) -> dict:
    return yaml.safe_load(dump_yaml(dict(config))) or {}


def config_changes(old: Mapping, new: Mapping) -> list[str]:
    """Dotted keys whose values differ between two configs (added and removed keys included)."""
    return changed_keys(_normalised(old), _normalised(new))


def append_eval(run_dir: str | os.PathLike, epoch: int, kind: str, top1: float | None,
                top5: float | None = None, loss: float | None = None, seconds: float | None = None,
                settings: Mapping | None = None, **extra: Any) -> None:
    """Append one evaluation record to an existing run from any process (eval CLIs, notebooks),
    safely beside a running trainer. Numeric `extra` fields become columns; anything else
    (strings, lists, dicts) goes into the `settings` JSON string together with `settings`."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    TableWriter(run_dir / "evals.zarr", EVAL_COLUMNS, required=("epoch", "kind")).append_rows(
        [eval_row(epoch, kind, top1, top5, loss, seconds, settings, extra)])


def eval_row(epoch, kind, top1, top5, loss, seconds, settings, extra) -> dict:
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"log_eval: kind must be a non-empty string, got {kind!r}")
    row: dict[str, Any] = {"epoch": epoch, "kind": kind, "top1": top1, "top5": top5, "loss": loss,
                           "seconds": seconds, "time": time.time()}
    text = dict(plain(settings or {}, "log_eval settings"))
    for key, value in extra.items():
        value = plain(value, f"log_eval {key}")
        if value is None or isinstance(value, (int, float)):  # bool counts as a number (1.0 / 0.0)
            row[key] = float(value) if isinstance(value, bool) else value
        else:
            text[key] = value
    # compact and key-sorted: equal settings give equal strings (the views de-duplicate on it)
    row["settings"] = json.dumps(text, sort_keys=True, separators=(",", ":")) if text else ""
    return row


def metrics_row(row: Mapping[str, Any], now: float) -> dict:
    """Validate one metrics row at log time (so a bad value fails at the call that made it, not at
    a later flush) and turn numpy/torch scalars into Python numbers."""
    if not isinstance(row, Mapping):
        raise TypeError(f"log_metrics: rows must be dicts, got {type(row).__name__}")
    out: dict[str, Any] = {}
    for key, value in row.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, str):
            value = value.item()
        if value is not None and (isinstance(value, (bool, str)) or not isinstance(value, numbers.Real)):
            raise TypeError(f"log_metrics: {key!r} must be a number, got {type(value).__name__} {value!r}")
        out[key] = value
    step = out.get("step")
    if step is None:
        raise ValueError(f"log_metrics: row without 'step': {dict(row)!r}")
    if float(step) != int(step):
        raise ValueError(f"log_metrics: step must be an integer, got {step!r}")
    out.setdefault("time", now)
    return out


class RunWriter:
    """The write side of one run. Use as a context manager: an exception marks the run crashed."""

    def __init__(self, run_dir: str | os.PathLike, config: Mapping, resume: bool = False,
                 flush_rows: int = 500, flush_seconds: float = 10.0, heartbeat_seconds: float = 30.0):
        if not isinstance(config, Mapping):
            raise TypeError(f"runstore.create: config must be a dict, got {type(config).__name__}")
        self.path = Path(run_dir).absolute()
        self.name = self.path.name
        self.flush_rows = max(1, int(flush_rows))
        self.flush_seconds = float(flush_seconds)
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self.config = _normalised(config)
        self.config_changes: list[str] = []
        cfg_path = self.path / "config.yaml"
        if cfg_path.exists():
            old = load_yaml(cfg_path) or {}
            self.config_changes = config_changes(old, self.config)
            if self.config_changes and not resume:
                shown = ", ".join(self.config_changes[:8]) + (" ..." if len(self.config_changes) > 8 else "")
                raise RunExistsError(f"{self.path} already holds a run with a different config "
                                     f"(differs in: {shown}); pass resume=True to continue it, "
                                     "or choose another run directory")
        if not cfg_path.exists() or self.config_changes:
            write_atomic(cfg_path, dump_yaml(self.config))
        if self.config_changes:
            doc = read_status(self.path)
            history = list(doc.get("config_changes", []))
            history.append({"time": time.time(), "keys": self.config_changes})
            doc["config_changes"] = history
            write_status(self.path, doc)
        self._metrics = TableWriter(self.path / "metrics.zarr", METRIC_COLUMNS, required=("step",))
        self._evals = TableWriter(self.path / "evals.zarr", EVAL_COLUMNS, required=("epoch", "kind"))
        _recons.ensure(self.path / "recons.zarr")
        if not (self.path / "status.json").exists():
            write_status(self.path, new_status("created", None, None, {}))
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        self._last_beat = 0.0
        self._owns_running = False
        self.closed = False
        _OPEN.add(self)

    # ------------------------------------------------------------------ logging
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"RunWriter for {self.path} is closed")

    def log_metrics(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> None:
        """Buffer metrics rows (dicts with at least `step`; usual keys epoch, loss, lr, images_per_s,
        data_wait; any other numeric key becomes a column). `time` is filled in if absent."""
        self._check_open()
        if isinstance(rows, Mapping):
            rows = [rows]
        now = time.time()
        for row in rows:
            self._buffer.append(metrics_row(row, now))
        if len(self._buffer) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def log_eval(self, epoch: int, kind: str, top1: float | None = None, top5: float | None = None,
                 loss: float | None = None, seconds: float | None = None, settings: Mapping | None = None,
                 **extra: Any) -> None:
        """One evaluation result (written at once). kind: "knn" | "linprobe" | "linprobe_full" |
        "finetune" | any other name. Numeric extras become columns, others go to `settings` (JSON)."""
        self._check_open()
        self._evals.append_rows([eval_row(epoch, kind, top1, top5, loss, seconds, settings, extra)])
        self._beat()

    def log_reconstructions(self, epoch: int, split: str, image_ids, original, masked, reconstruction,
                            pasted, mask, loss, **attrs: Any) -> None:
        """Sampled reconstructions of one epoch and split ("train" / "val"): uint8 N x H x W x 3
        images, mask N x L (1 = masked), per-image loss. Re-logging an epoch replaces it.
        `attrs` (JSON-able, e.g. mask_ratio, step) are stored with the record."""
        self._check_open()
        arrays = _recons.validate(image_ids, original, masked, reconstruction, pasted, mask, loss)
        _recons.write(self.path / "recons.zarr", epoch, split, arrays, attrs)
        self._beat()

    def add_checkpoint(self, path: str | os.PathLike, epoch: int, step: int, tag: str | None = None,
                       **info: Any) -> None:
        """Record a checkpoint file (after it is written). Same path again replaces the entry."""
        self._check_open()
        p = Path(path)
        if not p.is_absolute():
            p = Path.cwd() / p
        try:
            stored = str(p.resolve().relative_to(self.path.resolve()))
        except ValueError:
            stored = str(p.resolve())
        size = p.stat().st_size if p.exists() else None
        entry = {"path": stored, "epoch": int(epoch), "step": int(step), "tag": tag, "time": time.time(),
                 "bytes": size, **plain(info, "add_checkpoint info")}
        index_path = self.path / CHECKPOINT_INDEX
        with file_lock(self.path / ".checkpoints.lock"):
            entries = [e for e in (load_json(index_path, default=[]) or []) if e.get("path") != stored]
            entries.append(entry)
            write_atomic(index_path, dump_json(entries))
        self._beat()

    def set_status(self, state: str, message: str | None = None, **info: Any) -> None:
        """"running" | "finished" | "crashed" | "preempted" (+ optional message and JSON-able info,
        e.g. epoch=, step=, epochs_done=). Flushes buffered metrics first, so a final state always
        comes after the data it describes."""
        self._check_open()
        self.flush(beat=False)
        doc = new_status(state, read_status(self.path), message, plain(info, "set_status info"))
        write_status(self.path, doc)
        self._owns_running = state == "running"
        self._last_beat = time.monotonic()

    def heartbeat(self) -> None:
        """Tell readers this run is alive (called by flushes; call it during long silent work)."""
        if not self._owns_running:
            return
        doc = read_status(self.path)
        if doc.get("state") != "running" or doc.get("pid") != os.getpid():
            self._owns_running = False  # someone else owns the status now
            return
        doc["heartbeat"] = time.time()
        write_status(self.path, doc)
        self._last_beat = time.monotonic()

    def _beat(self) -> None:
        if self._owns_running and time.monotonic() - self._last_beat >= self.heartbeat_seconds:
            self.heartbeat()

    # ------------------------------------------------------------------ lifecycle
    def flush(self, beat: bool = True) -> None:
        """Write buffered metrics rows and commit them."""
        if self._buffer:
            rows, self._buffer = self._buffer, []
            try:
                self._metrics.append_rows(rows)
            except BaseException:  # interrupted too: keep the rows for the next flush, re-raise
                self._buffer = rows + self._buffer
                raise
        self._last_flush = time.monotonic()
        if beat:
            self._beat()

    def close(self) -> None:
        """Flush and stop writing. Does not change the status: the caller says how the run ended."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        _OPEN.discard(self)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self.closed:
            try:
                self.set_status("crashed", message=f"{exc_type.__name__}: {exc}")
            except Exception:  # whatever fails here (a full disk, a damaged store) must not hide
                # the error that ended the run, which is propagating
                pass
        self.close()

    def reader(self):
        """A read-only `Run` on this directory (sees only flushed data)."""
        return Run(self.path)

    def __repr__(self) -> str:
        return f"RunWriter({str(self.path)!r}, buffered={len(self._buffer)})"


_OPEN: "weakref.WeakSet[RunWriter]" = weakref.WeakSet()


@atexit.register
def _flush_open_writers() -> None:
    """A trainer that forgets close() still keeps its last block of metrics."""
    for w in list(_OPEN):
        try:
            w.close()
        except Exception as exc:  # at exit, any failure: one failed writer must not cost the others
            print(f"runstore: could not flush {w.path} at exit: {exc}", file=sys.stderr)


def create(run_dir: str | os.PathLike, config: Mapping, resume: bool = False, **options: Any) -> RunWriter:
    """Create (or, with resume=True, continue) the run in `run_dir` and return its writer.
    A directory holding a run with a different config is refused unless resume=True.
    options: flush_rows (500), flush_seconds (10.0), heartbeat_seconds (30.0)."""
    return RunWriter(run_dir, config, resume=resume, **options)
