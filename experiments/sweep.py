"""Run the paper's ablations and scaling studies as named, resumable sweeps.

    python -m pipeline.build_ffcv ../shared/data/imagenette data/imagenette_ffcv --max-resolution 64  # once
    python -m experiments.sweep --list
    python -m experiments.sweep mask_ratio --preset cpu                    # -> runs/sweeps/mask_ratio
    python -m experiments.sweep sampler --preset cpu --epochs 2 --dry-run  # show the plan, run nothing
    python -m experiments.sweep epochs --values 10,25,50,100 --seeds 0,1   # other grid, two seeds a point
    python -m experiments.sweep model_size --preset imagenet --launcher "torchrun --nproc_per_node=8" \\
        --set data.train_path=/data/in1k/train.beton --set data.val_path=/data/in1k/val.beton

A sweep is a YAML file in ``configs/sweeps/`` (or any path): which config keys its points change,
and per preset (``cpu``, ``imagenet``) the base trainer config and the schedule. Each point is a
normal training run (``trainer.pretrain.main``) whose run directory lives under the sweep directory,
so the inspector and every run-store reader see it like any other run. Each point's start and end
are recorded in the sweep table through ``runstore.log_sweep_point`` (layout: ``experiments.store``);
``sweep_table(SWEEP_DIR)`` (``experiments.results``) gives the full table (point, varied value,
parameters, epochs, final loss, kNN and linear-probe top-1, seconds per epoch, status), rebuilt
from the run stores.

Why it resumes: sweeps take hours. Run the same command again after a kill and finished points are
skipped (their run store says ``finished`` at the planned number of epochs), a half-done point
resumes through the trainer's own resume from its last checkpoint, and the plan (``plan.json``)
makes sure the resumed sweep still has the settings it started with.

Shared points: sweeps of one preset share their baseline (e.g. random 75% masking, norm-pix, the
micro encoder, no mask token is a point of ``mask_token``, ``target``, ``sampler`` and ``model_size``).
Before training a point, the sweep looks in the sibling sweep directories (``--out``'s parent) for a
finished point with the same experiment (``experiments.reuse``; ``experiment_key``: the trainer's
resolved config, without where it is written) and copies that run instead of training it again; its
sweep record carries the donor's wall-clock and ``reused_from``. ``--no-reuse`` trains every point.

Config precedence, lowest first: base config (the preset's, or ``--base-config``) < the preset's
``set`` < ``--epochs`` < ``--set key=value`` < the point's own keys (a sweep's varied key always
wins, e.g. ``epochs`` in the ``epochs`` sweep) < ``--seeds``. A base's ``budget_minutes`` is dropped
(every point trains its planned epochs); ``--set budget_minutes=M`` compares at a fixed wall-clock.

Values and seeds: ``--values 10,25,50,100`` replaces the preset's values of the varied key (each
typed as a YAML value, as ``--set``'s; points named as the YAML's would be, e.g. ``epochs_10``).
``--seeds 0,1`` trains every point once per seed: the first seed's run keeps the point's directory
(``POINT/``, as without ``--seeds``), the others are ``POINT_seedK/`` with ``seed=K``. The sweep
table has one row per seed with the same ``point`` and its ``seed``; the report and the trends
average the seeds of a point, and its standard error adds their spread to the binomial one.
plan.json records both: a resumed sweep with other ``--seeds`` or ``--values`` is refused (exit 2).
Seeds are separate experiments for reuse (``seed`` is part of ``experiment_key``): to add a seed to
a finished sweep, run it with ``--seeds 0,1 --out`` a new sibling directory, and its seed-0 runs
are copied from the old sweep.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

import runstore
from common.dotted import changed_keys, get_dotted
from common.files import write_atomic
from common.keys import HARMLESS_ON_RESUME
from common.serialize import dump_yaml
from evals.inputs import RawHelpFormatter
from evals.online import epoch_evals
from experiments import store
from experiments.plan import Point, data_problem, default_out, plan, plan_seeds, validate
from experiments.results import (TABLE_COLUMNS, epochs_done, eval_seconds, final_epoch, find_sweeps, has_checkpoint,
                                 is_done, missing_final_evals, open_run, point_row, record_numbers, sweep_table)
from experiments.reuse import find_donor, reuse_point
from experiments.spec import SweepError, list_sweeps, load_spec, parse_seeds, parse_values
from model import load_checkpoint
from trainer.pretrain import main as pretrain_main

# the sweep's API in one import (defined in the modules named above, see experiments/__init__.py)
__all__ = ["run_sweep", "main", "ensure_final_evals", "check_plan", "host_info", "SweepPreempted", "EXIT_PREEMPTED",
           "SweepError", "list_sweeps", "load_spec", "Point", "plan", "validate", "data_problem", "default_out",
           "TABLE_COLUMNS", "sweep_table", "find_sweeps"]

EXIT_PREEMPTED = 75


class SweepPreempted(RuntimeError):
    """The trainer exited with code 75 (preempted); the sweep stops so it can be requeued."""


# ----------------------------------------------------------------------------- resuming a sweep
# The lr schedule of a point that has trained follows from these: the trainer refuses to resume
# under other values (exit 4), so the sweep refuses them for such points before launching anything.
_SCHEDULE_KEYS = ("epochs", "optim.warmup_epochs")
# Keys a resumed sweep may change: the trainer's harmless-on-resume keys, the schedule of points
# not trained yet (checked above for the others) and the CPU threads (not part of the experiment).
_MAY_CHANGE = (*HARMLESS_ON_RESUME, *_SCHEDULE_KEYS, "threads")


def _check_schedule(sweep_dir: Path, p: Point, old_config: dict) -> None:
    if not has_checkpoint(sweep_dir / p.name):
        return  # not trained yet: its schedule may still change with the sweep's --epochs
    for k in _SCHEDULE_KEYS:
        was, now = get_dotted(old_config, k), get_dotted(p.config, k)
        if was != now:
            raise SweepError(
                f"{sweep_dir / store.PLAN}: point {p.name!r} has trained with {k}={was!r}, now "
                f"{k}={now!r}: its lr schedule would change mid-run. Resume with the original "
                f"--epochs, or write this sweep elsewhere with --out.")


def check_plan(sweep_dir: Path, plan_doc: dict, points: list[Point]) -> None:
    """A resumed sweep must keep each point's experiment settings; epochs may grow only for points
    that have not trained yet (a trained point's schedule is fixed, see `_check_schedule`)."""
    old = {p["name"]: p for p in plan_doc.get("points", [])}
    for p in points:
        if p.name not in old:
            continue
        _check_schedule(sweep_dir, p, old[p.name]["config"])
        diff = changed_keys(old[p.name]["config"], p.config, ignore=_MAY_CHANGE)
        if diff:
            k = diff[0]
            raise SweepError(
                f"{sweep_dir / store.PLAN}: point {p.name!r} was started with "
                f"{k}={get_dotted(old[p.name]['config'], k)!r}, now {k}={get_dotted(p.config, k)!r} "
                f"({len(diff)} key(s) differ). Resume with the original settings, "
                f"or write this sweep elsewhere with --out.")


def _seeds_of(points: list[Point]) -> list[int]:
    return list(dict.fromkeys(p.seed for p in points))


def _check_grid(sweep_dir: Path, old_plan: dict, planned: list[Point], values: list | None) -> None:
    """A resumed sweep keeps its seeds and its ``--values`` (other ones would plan other runs)."""
    was, now = plan_seeds(old_plan), _seeds_of(planned)
    if was != now:
        raise SweepError(
            f"{sweep_dir / store.PLAN}: the sweep was started with seeds {_csv(was)}, now {_csv(now)}. "
            f"Resume with --seeds {_csv(was)}, or write this sweep elsewhere with --out (finished runs "
            f"of the same seed are then copied from here).")
    was_v = old_plan.get("values")
    if was_v != values:
        def say(v):
            return f"--values {_csv(v)}" if v is not None else "the sweep's own values (no --values)"
        raise SweepError(f"{sweep_dir / store.PLAN}: the sweep was started with {say(was_v)}, now {say(values)}. "
                         f"Resume with the original values, or write this sweep elsewhere with --out.")


def _csv(items) -> str:
    return ",".join(str(v) for v in items)


def _resumed_plan(sweep_dir: Path, spec: dict, planned: list[Point], values: list | None = None) -> dict | None:
    """The plan of an earlier run of this sweep in ``sweep_dir`` (None for a new one), checked
    against this run's points, seeds and ``--values``."""
    if not store.is_sweep_dir(sweep_dir):
        return None
    old_plan = store.read_plan(sweep_dir)
    if old_plan.get("sweep") != spec["name"]:
        raise SweepError(f"{sweep_dir}: holds sweep {old_plan.get('sweep')!r}, not {spec['name']!r}; "
                         f"choose another --out")
    _check_grid(sweep_dir, old_plan, planned, values)
    check_plan(sweep_dir, old_plan, planned)
    return old_plan


# ----------------------------------------------------------------------------- running
def host_info() -> dict:
    """Where the sweep ran: host, CPUs, torch threads, GPU (the report states the compute used)."""
    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _write_plan(sweep_dir: Path, spec: dict, preset: str, launcher: str | None, planned: list[Point],
                old_plan: dict | None, values: list | None = None) -> None:
    """plan.json with every planned run (the table lists the ones not run yet as pending), its seeds
    and ``--values`` (None: the spec's); a resumed sweep keeps its first start time."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "configs").mkdir(exist_ok=True)
    store.write_plan(sweep_dir, {
        "sweep": spec["name"], "number": spec.get("number"), "title": spec.get("title", spec["name"]),
        "preset": preset, "axis": spec.get("axis", {}), "paper": spec.get("paper"),
        "spec_path": spec["_path"], "launcher": launcher,
        "created": (old_plan or {}).get("created", time.time()), "updated": time.time(),
        "host": host_info(), "seeds": _seeds_of(planned), "values": values,
        "points": [{"name": p.name, "point": p.point, "seed": p.seed, "value": p.value, "paper": p.paper,
                    "set": p.overrides, "config": p.config, "hash": p.config_hash()} for p in planned],
    })


def _run_point(point: Point, cfg_path: Path, run_dir: Path, launcher: str | None) -> int:
    """Train one point (resuming when it has a checkpoint); return the trainer's exit code."""
    argv = ["--config", str(cfg_path), f"run_dir={run_dir}"]
    if has_checkpoint(run_dir):
        argv.append("--resume")
    elif run_dir.exists():
        # started but killed before its first checkpoint: nothing worth keeping, start it cleanly
        shutil.rmtree(run_dir)
    if launcher:
        cmd = shlex.split(launcher)
        if cmd == ["python"]:
            cmd = [sys.executable]
        return subprocess.call([*cmd, "-m", "trainer.pretrain", *argv])
    # the trainer installs its own SIGTERM/SIGUSR1 handlers (save, exit 75); put ours back afterwards
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = pretrain_main(argv)
    except SystemExit as exc:  # argparse / explicit exits inside the trainer
        rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    return int(rc or 0)


def ensure_final_evals(point: Point, run_dir: Path, echo=print) -> bool:
    """Run the final online evals of a finished point whose run store lacks them; True if it did.

    Why: the trainer saves its last checkpoint before the final evals, so a sweep killed during
    those evals resumes into an already-finished run that never evaluates. The same records as the
    trainer's (``evals.online.epoch_evals`` on the final checkpoint) are appended to the run store.
    """
    run = open_run(run_dir)
    if run is None or run.status != "finished":
        return False
    missing = missing_final_evals(point, run)
    ckpt = run.latest_checkpoint()
    if not missing or ckpt is None:
        return False
    echo(f"[sweep] {point.name}: final evals {missing} missing from the run store; running them on {ckpt.name}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(ckpt).to(device).eval()
    ev_cfg = dict(point.config["evals"], knn="knn" in missing, linprobe="linprobe" in missing)
    epoch = final_epoch(point, run)
    for rec in epoch_evals(model, ev_cfg, point.config["data"], device):
        rec = dict(rec)
        rec.pop("epoch", None)
        runstore.append_eval(run_dir, epoch=epoch, **rec)
    return True


def _train_point(p: Point, sweep_dir: Path, run: runstore.Run | None, launcher: str | None, tag: str,
                 echo) -> None:
    """Train (or resume) one point and record its start and end in the sweep table."""
    run_dir = sweep_dir / p.name
    cfg_path = sweep_dir / "configs" / f"{p.name}.yaml"
    write_atomic(cfg_path, dump_yaml(p.config))
    before = epochs_done(run, run_dir) if has_checkpoint(run_dir) else 0
    echo(f"{tag} {p.name}: training {p.epochs} epochs"
         f"{f' (resuming after epoch {before})' if before else ''} -> {run_dir}")
    store.log_start(sweep_dir, p.name, p.value, run_dir, seed=p.seed, base_point=p.point, epochs_before=before,
                    config_hash=p.config_hash())
    t0 = time.time()
    error = None
    try:
        rc = _run_point(p, cfg_path, run_dir, launcher)
    except Exception as exc:  # one broken point must not lose the others: it is recorded as failed
        traceback.print_exc()
        rc, error = 1, f"{type(exc).__name__}: {exc}"
    wall = time.time() - t0
    run = open_run(run_dir)
    status = "done" if rc == 0 and is_done(p, run) else ("preempted" if rc == EXIT_PREEMPTED else "failed")
    if status == "done":
        ensure_final_evals(p, run_dir, echo)
    store.log_end(sweep_dir, p.name, p.value, run_dir, status, record_numbers(point_row(p, sweep_dir)),
                  seed=p.seed, base_point=p.point, rc=rc, error=error, invocation_s=round(wall, 3),
                  epochs_before=before, epochs_after=epochs_done(run, run_dir),
                  eval_s=round(eval_seconds(run, before), 3) if run is not None else 0.0)
    if status == "preempted":
        raise SweepPreempted(f"point {p.name} was preempted; run the same command again to resume")
    if status == "failed":
        echo(f"{tag} {p.name}: FAILED (exit code {rc}{', ' + error if error else ''}); "
             f"see the trainer's messages above")


def _run_one(p: Point, sweep_dir: Path, launcher: str | None, reuse: bool, tag: str, echo) -> None:
    """Skip a finished point (filling in final evals it lacks), copy one a sibling sweep finished,
    or train it."""
    run_dir = sweep_dir / p.name
    run = open_run(run_dir)
    if is_done(p, run):
        if ensure_final_evals(p, run_dir, echo):
            store.log_end(sweep_dir, p.name, p.value, run_dir, "done", record_numbers(point_row(p, sweep_dir)),
                          seed=p.seed, base_point=p.point, rc=0, invocation_s=0.0, epochs_before=p.epochs,
                          epochs_after=p.epochs, eval_s=0.0)
        else:
            echo(f"{tag} {p.name}: finished earlier, skipped")
        return
    donor = find_donor(p, sweep_dir) if reuse and run is None else None
    if donor is not None:
        reuse_point(p, sweep_dir, donor, echo)
        return
    _train_point(p, sweep_dir, run, launcher, tag, echo)


def _dry_run(spec: dict, preset: str, sweep_dir: Path, points: list[Point], missing: str | None,
             reuse: bool, echo, values: list | None = None) -> pd.DataFrame:
    """Print the plan (values, seeds) and each run's state (done / partial / todo / reuse); write nothing."""
    echo(f"sweep {spec['name']} ({spec.get('title', '')}), preset {preset}, dir {sweep_dir}")
    echo(f"  values: {', '.join(dict.fromkeys(str(p.value) for p in points))}"
         f"{' (--values)' if values is not None else ''}")
    echo(f"  seeds:  {', '.join(str(k) for k in _seeds_of(points))}")
    if missing:
        echo(f"  warning: {missing}: the sweep would stop before its first point")
    for p in points:
        run = open_run(sweep_dir / p.name)
        state = "done" if is_done(p, run) else ("partial" if run is not None else "todo")
        donor = find_donor(p, sweep_dir) if reuse and run is None else None
        if donor is not None:
            state = f"reuse ({donor[1]})"
        sets_txt = " ".join(f"{k}={v}" for k, v in p.overrides.items())
        echo(f"  {p.name:24s} {state:8s} epochs={p.epochs:<5d} seed={p.seed:<3d} {sets_txt}")
    return pd.DataFrame([{"point": p.point, "run": p.name, "value": p.value, "seed": p.seed, "epochs": p.epochs}
                         for p in points])


def _select(planned: list[Point], only: list[str] | None) -> list[Point]:
    """The runs of the points named in ``only`` (all their seeds), or of single runs named there."""
    if not only:
        return planned
    unknown = set(only) - {p.name for p in planned} - {p.point for p in planned}
    if unknown:
        names = dict.fromkeys([*(p.point for p in planned), *(p.name for p in planned)])
        raise SweepError(f"unknown point(s) {sorted(unknown)}; points: {', '.join(names)}")
    return [p for p in planned if p.name in only or p.point in only]


def run_sweep(name: str, preset: str = "cpu", out: str | Path | None = None, base_config=None,
              epochs: int | None = None, sets=(), only: list[str] | None = None, dry_run: bool = False,
              launcher: str | None = None, reuse: bool = True, echo=print, values: list | None = None,
              seeds: list[int] | None = None) -> pd.DataFrame:
    """Run (or resume) sweep ``name``; return its table. See the module doc for the layout.

    ``values`` replaces the preset's values of the varied key (``--values``); ``seeds`` trains every
    point once per seed (``--seeds``; None: once, at the config's seed). ``only`` names points (all
    their seeds) or single runs (``POINT_seedK``).

    Raises SweepError on a bad spec or config, or when a resumed sweep's settings changed; a point
    whose trainer fails is marked ``failed`` and the sweep moves on; a preempted point (trainer exit
    code 75) stops the sweep with ``SweepPreempted`` so that a scheduler can requeue it. With
    ``reuse``, a point never started here whose experiment finished in a sibling sweep is copied.
    """
    spec = load_spec(name)
    sweep_dir = Path(out) if out else default_out(spec["name"], preset)
    planned = plan(spec, preset, base_config, epochs, sets, sweep_dir=sweep_dir, values=values, seeds=seeds, echo=echo)
    points = _select(planned, only)
    validate(planned)
    missing = data_problem(points)
    if missing and not dry_run:
        raise SweepError(f"{missing}; nothing was run (pass the data with --set data.train_path=... "
                         f"--set data.val_path=... or --base-config FILE)")
    old_plan = _resumed_plan(sweep_dir, spec, planned, values)
    if dry_run:
        return _dry_run(spec, preset, sweep_dir, points, missing, reuse, echo, values)
    _write_plan(sweep_dir, spec, preset, launcher, planned, old_plan, values)
    bar = tqdm(points, desc=f"sweep {spec['name']}", unit="point", disable=not sys.stderr.isatty())
    for p in bar:
        bar.set_postfix_str(p.name)
        _run_one(p, sweep_dir, launcher, reuse, f"[sweep {spec['name']}]", echo)
    return sweep_table(sweep_dir)


# ----------------------------------------------------------------------------- CLI
def _format_table(table: pd.DataFrame) -> str:
    seed = ["seed"] if table["seed"].nunique() > 1 else []   # shown for sweeps with --seeds
    cols = ["point", "value", *seed, "encoder_params_m", "epochs_done", "final_loss", "knn_top1", "linprobe_top1",
            "s_per_epoch", "status"]
    return table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__, formatter_class=RawHelpFormatter,
        epilog=textwrap.fill(
               "Writes: everything under the sweep directory (--out; default runs/sweeps/NAME, "
               "runs/sweeps/NAME_PRESET for other presets, relative to the current directory): "
               "plan.json, configs/POINT.yaml, one run directory per point (POINT/: config.yaml, "
               "checkpoints/, metrics.zarr, evals.zarr, recons.zarr; with --seeds also POINT_seedK/ "
               "for each further seed) and the sweep table "
               "(sweep.zarr, sweep.json). --dry-run and --list write nothing.", 100))
    ap.add_argument("name", nargs="?", help="sweep name (configs/sweeps/NAME.yaml) or a sweep YAML path")
    ap.add_argument("--list", action="store_true", help="list the known sweeps and exit")
    ap.add_argument("--preset", default="cpu", help="cpu (Imagenette, 64 px) or imagenet (the paper's setting)")
    ap.add_argument("--base-config", help="trainer YAML to use instead of the preset's base config (default: "
                                          "configs/sweeps/_base_PRESET.yaml)")
    ap.add_argument("--out", help="sweep directory (default runs/sweeps/NAME; runs/sweeps/NAME_PRESET for other presets)")
    ap.add_argument("--epochs", type=int, help="epochs of every point (except where the sweep varies epochs; "
                                               "default: the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a trainer config key for every point (repeatable), e.g. data.num_workers=4")
    ap.add_argument("--values", metavar="V1,V2,...",
                    help="values of the varied key instead of the preset's, each typed as in YAML, e.g. "
                         "--values 10,25,50,100 for epochs (default: the preset's values)")
    ap.add_argument("--seeds", metavar="K1,K2,...",
                    help="train every point once per seed, e.g. --seeds 0,1; the first seed's run keeps the "
                         "point's directory, the others are POINT_seedK (default: once, at the config's seed)")
    ap.add_argument("--points", help="comma-separated subset of points (all their seeds) or runs "
                                     "(POINT_seedK) to run (default: all)")
    ap.add_argument("--launcher", help="run each point as a subprocess under this launcher, e.g. "
                                       "'python' or 'torchrun --nproc_per_node=8' (default: in this process)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (values, seeds) and each run's state; run nothing")
    ap.add_argument("--no-reuse", action="store_true",
                    help="train every point, even when a sibling sweep already finished the same experiment")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if args.list or not args.name:
        for n in list_sweeps():
            spec = load_spec(n)
            print(f"{n:14s} {spec.get('title', '')}  (presets: {', '.join(spec['presets'])})")
        return 0 if args.list else 2
    only = args.points.split(",") if args.points else None
    try:
        table = run_sweep(args.name, preset=args.preset, out=args.out, base_config=args.base_config,
                          epochs=args.epochs, sets=args.set, dry_run=args.dry_run, launcher=args.launcher,
                          reuse=not args.no_reuse, only=only,
                          values=parse_values(args.values) if args.values is not None else None,
                          seeds=parse_seeds(args.seeds) if args.seeds is not None else None)
    except SweepPreempted as exc:
        print(f"experiments.sweep: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (SweepError, store.SweepDirError) as exc:
        print(f"experiments.sweep: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print(_format_table(table))
    runs = table["run_dir"].map(lambda d: Path(d).name)
    ran = table if not only else table[table["point"].isin(only) | runs.isin(only)]
    return 0 if (ran["status"] == "finished").all() else 1


if __name__ == "__main__":
    sys.exit(main())
