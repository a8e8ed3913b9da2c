"""The sweep table: one row per planned run, rebuilt from the plan, the run stores and the sweep records.

``sweep_table(SWEEP_DIR)`` gives point, varied value, seed, parameters, epochs, final loss, kNN and
linear-probe top-1, seconds per epoch, status (columns ``TABLE_COLUMNS``). It never writes, so it
is safe to call while the sweep runs. The run stores hold the truth about each point; the sweep
records (``experiments.store``) add what only the driver knows: wall-clock per invocation, which
invocation resumed what, and which points were copied from another sweep. A point trained at
several seeds (``--seeds``) has one row per seed, all with the point's name in ``point`` and their
own ``seed`` and ``run_dir``: ``experiments.trends.with_standard_errors`` averages them into one row
per point whose standard error adds the seed-to-seed spread to the binomial one.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

import runstore
from common.dotted import get_dotted
from experiments import store
from experiments.plan import Point, plan_points
from model import param_counts

# Columns of the sweep table, in order (the inspector and the report rely on these names).
TABLE_COLUMNS = [
    "point", "value", "seed", "paper_setting", "model", "encoder_params_m", "params_m", "epochs",
    "epochs_done", "final_loss", "knn_top1", "linprobe_top1", "s_per_epoch", "images_per_s",
    "wall_s", "status", "run_dir", "reused_from", "n_val",
]

# What runstore raises for a file of a run it cannot read: OSError, or a ValueError naming the file
# (a corrupt table's metadata, a config or status that is not a mapping). Such a part of a point's
# run reads as missing in its row, so one damaged run never hides the rest of the table.
UNREADABLE = (OSError, ValueError)


def open_run(run_dir: Path) -> runstore.Run | None:
    """runstore.open(run_dir), or None when the directory holds no run yet (no config.yaml)."""
    try:
        return runstore.open(run_dir)
    except FileNotFoundError:
        return None


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.pth")) if (run_dir / "checkpoints").is_dir() else False


def epochs_done(run: runstore.Run | None, run_dir: Path | None = None) -> int:
    """Epoch a run would continue in: the newest checkpoint's, from the run store's index or, when
    a kill fell between writing a checkpoint and indexing it, from the file name (ckpt-eEEEE-...)."""
    done = 0
    if run is not None:
        try:
            ck = run.checkpoints()
        except UNREADABLE:  # an index runstore cannot read: the file names below decide
            ck = pd.DataFrame()
        if "epoch" in ck and len(ck):
            done = int(pd.to_numeric(ck["epoch"], errors="coerce").fillna(0).max())
        run_dir = run_dir or Path(run.path)
    if run_dir is not None and (Path(run_dir) / "checkpoints").is_dir():
        for f in (Path(run_dir) / "checkpoints").glob("ckpt-e*-s*.pth"):
            try:
                done = max(done, int(f.name.split("-")[1][1:]))
            except (IndexError, ValueError):
                continue
    return done


def is_done(point: Point, run: runstore.Run | None) -> bool:
    """The run finished, planned for at least the point's epochs."""
    if run is None or run.status != "finished":
        return False
    try:
        planned = int(run.config.get("epochs", -1))
    except (*UNREADABLE, TypeError):  # unreadable config.yaml, or epochs not a number: not this point's run
        planned = -1
    return planned >= point.epochs


def read_evals(run: runstore.Run) -> pd.DataFrame:
    """The run's eval records; an empty frame when its store cannot be read (see UNREADABLE)."""
    try:
        return run.evals()
    except UNREADABLE:
        return pd.DataFrame()


def _param_counts(cfg: dict) -> tuple[float, float]:
    """(encoder, total) trainable parameters in millions (``model.param_counts``, on the meta device);
    NaN for a config the model refuses (the trainer names the problem when the point runs)."""
    key = json.dumps({"model": cfg.get("model", {}), "img": get_dotted(cfg, "data.image_size")},
                     sort_keys=True, default=str)
    return _param_counts_cached(key)


@functools.lru_cache(maxsize=256)
def _param_counts_cached(key: str) -> tuple[float, float]:
    cfg = json.loads(key)
    try:
        enc, tot = param_counts({"model": cfg["model"], "data": {"image_size": cfg["img"]}})
    except (KeyError, ValueError, TypeError):  # model.param_counts' errors for a config it cannot build
        return math.nan, math.nan
    return enc / 1e6, tot / 1e6


def _prefer_online(evals: pd.DataFrame) -> pd.DataFrame:
    """The trainer's online eval records (fixed subset, every epoch) of ``evals``, or all of them
    when there are none: a record an eval CLI added later names its checkpoint and may be on other
    data, so it counts only when the point has nothing else."""
    if "settings" not in evals:
        return evals
    online = evals[~evals["settings"].fillna("").astype(str).str.contains('"checkpoint"')]
    return online if len(online) else evals


def _last_eval(evals: pd.DataFrame, kind: str) -> float:
    if evals.empty or "kind" not in evals or "top1" not in evals:
        return math.nan
    sel = evals[evals["kind"] == kind]
    if sel.empty:
        return math.nan
    sel = _prefer_online(sel)
    if "epoch" in sel:
        sel = sel.sort_values("epoch", kind="stable")
    return float(sel["top1"].iloc[-1])


def _eval_n_val(evals: pd.DataFrame) -> float:
    """Val images behind the point's accuracies (the newest eval record naming ``n_val`` in its
    settings); experiments.trends needs it for the binomial standard error. NaN when none says."""
    if evals.empty or "settings" not in evals:
        return math.nan
    settings = _prefer_online(evals)["settings"].fillna("").astype(str)
    for text in reversed(list(settings)):
        try:
            n = json.loads(text).get("n_val") if text else None
        except (ValueError, AttributeError):
            continue
        if isinstance(n, (int, float)) and n > 0:
            return float(n)
    return math.nan


def timing(records: pd.DataFrame, point: str) -> tuple[float, float]:
    """(wall seconds, seconds per trained epoch without evals) over a point's ended invocations.

    An invocation killed with SIGKILL leaves no end record, so its time is not counted (the epochs
    it finished are then credited to no one: the resumed invocation counts only its own epochs).
    """
    if records is None or records.empty or "invocation_s" not in records:
        return math.nan, math.nan
    ended = records[(records["point"] == point) & (records["status"] != "running")]
    if not len(ended):
        return math.nan, math.nan
    num = lambda col: pd.to_numeric(ended[col], errors="coerce").fillna(0.0) if col in ended else 0.0
    wall = float(pd.to_numeric(ended["invocation_s"], errors="coerce").sum())
    epochs = float((num("epochs_after") - num("epochs_before")).clip(lower=0).sum())
    eval_s = float(num("eval_s").sum())
    return wall, ((wall - eval_s) / epochs if epochs > 0 else math.nan)


def _training_numbers(run: runstore.Run) -> dict:
    """final_loss (mean over the last epoch's steps) and images_per_s (median) from the metrics."""
    out = {}
    try:
        metrics = run.metrics()
    except UNREADABLE:
        metrics = pd.DataFrame()
    if not metrics.empty and "loss" in metrics:
        last = metrics
        if "epoch" in metrics:
            # the trainer logs fractional epochs (epoch + step/steps_per_epoch): the last epoch's
            # steps are those in (E-1, E]; the final loss is their mean, not one noisy step
            ep = pd.to_numeric(metrics["epoch"], errors="coerce")
            last = metrics[np.ceil(ep - 1e-9) == np.ceil(ep.max() - 1e-9)]
        out["final_loss"] = float(pd.to_numeric(last["loss"], errors="coerce").mean())
        if "images_per_s" in metrics:
            ips = pd.to_numeric(metrics["images_per_s"], errors="coerce").dropna()
            if len(ips):
                out["images_per_s"] = float(ips.median())
    return out


def point_row(point: Point, sweep_dir: Path, records: pd.DataFrame | None = None) -> dict:
    """One row of the sweep table for ``point``, read from its run store and the sweep records."""
    run_dir = Path(sweep_dir) / point.name
    run = open_run(run_dir)
    enc_m, tot_m = _param_counts(point.config)
    row = {
        "point": point.point, "value": point.value, "seed": point.seed, "paper_setting": point.paper,
        "model": get_dotted(point.config, "model.name"), "encoder_params_m": enc_m, "params_m": tot_m,
        "epochs": point.epochs, "epochs_done": 0, "final_loss": math.nan, "knn_top1": math.nan,
        "linprobe_top1": math.nan, "s_per_epoch": math.nan, "images_per_s": math.nan,
        "wall_s": math.nan, "status": "pending", "run_dir": str(run_dir), "reused_from": "",
        "n_val": math.nan,
    }
    records = store.records(sweep_dir) if records is None else records
    row["wall_s"], row["s_per_epoch"] = timing(records, point.name)
    if len(records) and "reused_from" in records:
        mine = records.loc[records["point"] == point.name, "reused_from"].dropna().astype(str)
        mine = mine[mine != ""]
        row["reused_from"] = mine.iloc[-1] if len(mine) else ""
    if run is None:
        return row
    row["status"] = run.status
    row["epochs"] = final_epoch(point, run)
    row["epochs_done"] = epochs_done(run)
    row.update(_training_numbers(run))
    evals = read_evals(run)
    row["knn_top1"] = _last_eval(evals, "knn")
    row["linprobe_top1"] = _last_eval(evals, "linprobe")
    row["n_val"] = _eval_n_val(evals)
    return row


def record_numbers(row: dict) -> dict:
    """The numbers of a table row that go into the sweep record."""
    return {k: row[k] for k in ("encoder_params_m", "params_m", "final_loss", "knn_top1", "linprobe_top1",
                                "images_per_s", "n_val")}


def sweep_table(sweep_dir) -> pd.DataFrame:
    """The sweep table of a sweep directory, rebuilt from its plan, run stores and sweep records.

    One row per planned run (point and seed) in plan order, columns ``TABLE_COLUMNS``; points not started yet have
    status ``pending``. Top-1 values are as the evals record them. ``table.attrs`` carries the plan's
    ``sweep``, ``title``, ``number``, ``preset``, ``axis`` and ``paper`` keys (for figures). Safe to
    call while the sweep runs; never writes.
    """
    sweep_dir = Path(sweep_dir)
    plan_doc = store.read_plan(sweep_dir)
    records = store.records(sweep_dir)
    rows = [point_row(p, sweep_dir, records) for p in plan_points(plan_doc)]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for key in ("sweep", "title", "preset", "axis", "paper", "number"):
        table.attrs[key] = plan_doc.get(key)
    return table


def find_sweeps(root, max_depth: int = 3) -> list[Path]:
    """Sweep directories (holding plan.json) at or under ``root``, sorted; for the inspector's list."""
    root = Path(root)
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if store.is_sweep_dir(d):
            found.append(d)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for c in children:
            walk(c, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def eval_seconds(run: runstore.Run, since_epoch: int) -> float:
    """Seconds spent in online evals after ``since_epoch``. Each record's ``seconds`` includes the
    shared feature extraction, so per epoch the longest record is counted (kNN itself is ~instant)."""
    ev = read_evals(run)
    if ev.empty or "seconds" not in ev or "epoch" not in ev:
        return 0.0
    ev = ev[pd.to_numeric(ev["epoch"], errors="coerce") > since_epoch]
    secs = pd.to_numeric(ev["seconds"], errors="coerce").fillna(0.0)
    return float(secs.groupby(ev["epoch"]).max().sum()) if len(ev) else 0.0


def final_epoch(point: Point, run: runstore.Run) -> int:
    """The run's last epoch: the point's epochs, or fewer where a wall-clock budget the sweep was
    asked for (``--set budget_minutes=M``) fixed them (status.json's ``budget_epochs``)."""
    try:
        status = run.status_info()
    except UNREADABLE:
        status = None
    planned = runstore.planned_epochs(point.config, status)
    return int(planned) if isinstance(planned, int) and 0 < planned <= point.epochs else point.epochs


def missing_final_evals(point: Point, run: runstore.Run) -> list[str]:
    """Eval kinds planned after the last epoch but absent from the run store."""
    ev_cfg = point.config.get("evals", {})
    if not ev_cfg.get("every"):
        return []
    wanted = [k for k in ("knn", "linprobe") if ev_cfg.get(k, True)]
    ev = read_evals(run)
    have = set(ev.loc[pd.to_numeric(ev["epoch"], errors="coerce") == final_epoch(point, run), "kind"]) \
        if {"epoch", "kind"} <= set(ev.columns) else set()
    return [k for k in wanted if k not in have]
