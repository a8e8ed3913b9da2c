"""Shared points: a finished run of the same experiment in a sibling sweep is copied, not trained again.

Sweeps of one preset share their baseline (e.g. random 75% masking, norm-pix, the micro encoder,
no mask token is a point of ``mask_token``, ``target``, ``sampler`` and ``model_size``). Before
training a point, the sweep looks in the sibling sweep directories (``--out``'s parent) for a
finished point with the same experiment (``plan.experiment_key``: the trainer's resolved config,
without where it is written) and copies that run instead; its sweep record carries the donor's
wall-clock and ``reused_from``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from experiments import store
from experiments.plan import Point, experiment_key, plan_points
from experiments.results import find_sweeps, is_done, missing_final_evals, open_run, point_row, record_numbers, timing
from trainer.config import ConfigError


def _same_experiment(q: Point, point: Point, key: str) -> bool:
    if q.epochs != point.epochs:
        return False
    try:
        return experiment_key(q.config) == key
    except (ConfigError, KeyError):  # planned under rules the trainer no longer accepts: not shown to be the same
        return False


def find_donor(point: Point, sweep_dir: Path) -> tuple[Path, Path, str] | None:
    """A finished run of the same experiment in a sibling sweep directory, as (sweep_dir, run_dir,
    point name), or None. Only runs that finished all planned epochs with their final evals count."""
    key = experiment_key(point.config)
    sweep_dir = Path(sweep_dir).absolute()
    for other in find_sweeps(sweep_dir.parent, max_depth=1):
        if other.absolute() == sweep_dir:
            continue
        try:
            doc = store.read_plan(other)
        except store.SweepDirError:
            continue
        for q in plan_points(doc):
            if not _same_experiment(q, point, key):
                continue
            run = open_run(other / q.name)
            if is_done(q, run) and not missing_final_evals(q, run):
                return other, other / q.name, q.name
    return None


def _copy_run(donor_run: Path, run_dir: Path) -> None:
    """Copy a run directory through a temporary directory and a rename, so a kill never leaves a
    half copy that looks finished; the copy's own config says where it lives now."""
    tmp = run_dir.with_name(f".{run_dir.name}.reuse-tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(donor_run, tmp)
    cfg_file = tmp / "config.yaml"
    if cfg_file.is_file():
        doc = yaml.safe_load(cfg_file.read_text()) or {}
        if isinstance(doc, dict) and "run_dir" in doc:
            doc["run_dir"] = str(run_dir)
            cfg_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(tmp, run_dir)


def reuse_point(point: Point, sweep_dir: Path, donor: tuple[Path, Path, str], echo=print) -> None:
    """Copy the donor's run into ``sweep_dir/POINT`` and log it with the donor's timing."""
    donor_sweep, donor_run, donor_point = donor
    run_dir = Path(sweep_dir) / point.name
    _copy_run(donor_run, run_dir)
    recs = store.records(donor_sweep)
    wall, _ = timing(recs, donor_point)
    ended = recs[(recs["point"] == donor_point) & (recs["status"] != "running")] if len(recs) else recs
    eval_s = float(pd.to_numeric(ended["eval_s"], errors="coerce").fillna(0).sum()) \
        if len(ended) and "eval_s" in ended else 0.0
    echo(f"[sweep] {point.name}: same experiment as {donor_run} (finished); copied it instead of training")
    store.log_end(sweep_dir, point.name, point.value, run_dir, "done", record_numbers(point_row(point, sweep_dir)),
                  seed=point.seed, base_point=point.point, rc=0, invocation_s=wall if wall == wall else 0.0, epochs_before=0, epochs_after=point.epochs,
                  eval_s=round(eval_s, 3), reused_from=str(donor_run))
