"""Run the paper's ablations and scaling studies as named, resumable sweeps.

    python -m pipeline.build_ffcv ../shared/data/imagenette data/imagenette_ffcv --max-resolution 64  # once
    python -m experiments.sweep --list
    python -m experiments.sweep mask_ratio --preset cpu                    # -> runs/sweeps/mask_ratio
    python -m experiments.sweep sampler --preset cpu --epochs 2 --dry-run  # show the plan, run nothing
    python -m experiments.sweep model_size --preset imagenet --launcher "torchrun --nproc_per_node=8" \\
        --set data.train_path=/data/in1k/train.beton --set data.val_path=/data/in1k/val.beton

A sweep is a YAML file in ``configs/sweeps/`` (or any path): which config keys its points change,
and per preset (``cpu``, ``imagenet``) the base trainer config and the schedule. Each point is a
normal training run (``trainer.pretrain.main``) whose run directory lives under the sweep directory,
so the inspector and every run-store reader see it like any other run. Each point's start and end
are recorded in the sweep table through ``runstore.log_sweep_point`` (layout: ``experiments.store``);
``sweep_table(SWEEP_DIR)`` gives the full table (point, varied value, parameters, epochs, final loss,
kNN and linear-probe top-1, seconds per epoch, status), rebuilt from the run stores.

Why it resumes: sweeps take hours. Run the same command again after a kill and finished points are
skipped (their run store says ``finished`` at the planned number of epochs), a half-done point
resumes through the trainer's own resume from its last checkpoint, and the plan (``plan.json``)
makes sure the resumed sweep still has the settings it started with.

Shared points: sweeps of one preset share their baseline (e.g. random 75% masking, norm-pix, the
micro encoder, no mask token is a point of ``mask_token``, ``target``, ``sampler`` and ``model_size``).
Before training a point, the sweep looks in the sibling sweep directories (``--out``'s parent) for a
finished point with the same experiment (``experiment_key``: the trainer's resolved config, without
where it is written) and copies that run instead of training it again; its sweep record carries the
donor's wall-clock and ``reused_from``. ``--no-reuse`` trains every point.

Config precedence, lowest first: base config (the preset's, or ``--base-config``) < the preset's
``set`` < ``--epochs`` < ``--set key=value`` < the point's own keys (a sweep's varied key always
wins, e.g. ``epochs`` in the ``epochs`` sweep).
"""
from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from experiments import store

ROOT = Path(__file__).resolve().parent.parent
SWEEPS_DIR = ROOT / "configs" / "sweeps"
PRESETS = ("cpu", "imagenet")
EXIT_PREEMPTED = 75

# Columns of the sweep table, in order (the inspector and the report rely on these names).
TABLE_COLUMNS = [
    "point", "value", "paper_setting", "model", "encoder_params_m", "params_m", "epochs",
    "epochs_done", "final_loss", "knn_top1", "linprobe_top1", "s_per_epoch", "images_per_s",
    "wall_s", "status", "run_dir", "reused_from", "n_val",
]


class SweepError(ValueError):
    """A sweep spec, a preset or a sweep directory is invalid; the message says which and why."""


# ----------------------------------------------------------------------------- specs
def list_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> list[str]:
    """Names of the sweeps shipped in configs/sweeps (files starting with '_' are bases)."""
    return sorted(p.stem for p in Path(sweeps_dir).glob("*.yaml") if not p.name.startswith("_"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_spec(name_or_path: str, sweeps_dir: Path = SWEEPS_DIR) -> dict:
    """The sweep spec named NAME (configs/sweeps/NAME.yaml) or read from a YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(sweeps_dir) / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SweepError(f"unknown sweep {name_or_path!r}; known sweeps: {', '.join(list_sweeps(sweeps_dir))}")
    spec = _read_yaml(path)
    spec.setdefault("name", path.stem)
    spec["_path"] = str(path)
    if not isinstance(spec.get("presets"), dict) or not spec["presets"]:
        raise SweepError(f"{path}: a sweep needs 'presets' (e.g. cpu: {{base: _base_cpu.yaml, epochs: 8}})")
    return spec


def _point_name(key: str, value: Any) -> str:
    short = key.split(".")[-1]
    text = str(value)
    if short == "name":  # model names: keep the distinctive part (mae_vit_micro_patch8_64 -> micro_patch8_64)
        return text.removeprefix("mae_vit_")
    return f"{short}_{text}"


def _spec_points(spec: dict, preset: dict) -> list[dict]:
    """Points of a preset: its own 'points'/'values' or the sweep's shared ones."""
    for src in (preset, spec):
        if "points" in src:
            pts = [dict(p) for p in src["points"]]
            break
        if "values" in src:
            key = src.get("vary", spec.get("vary"))
            if not key:
                raise SweepError(f"{spec['_path']}: 'values' needs 'vary' (the config key they set)")
            labels = {**spec.get("paper_labels", {}), **src.get("paper_labels", {})}
            pts = [{"name": _point_name(key, v), "value": v, "set": {key: v},
                    "paper": labels.get(v)} for v in src["values"]]
            break
    else:
        raise SweepError(f"{spec['_path']}: no 'points' or 'values' for this preset")
    names = [p.get("name") for p in pts]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise SweepError(f"{spec['_path']}: every point needs a unique name, got {names}")
    for p in pts:
        if any(c in str(p["name"]) for c in "/\\") or str(p["name"]).startswith("."):
            raise SweepError(f"{spec['_path']}: point name {p['name']!r} is not a plain directory name")
        p.setdefault("set", {})
        p.setdefault("value", p["name"])
    return pts


# ----------------------------------------------------------------------------- planning
def _set_dotted(d: dict, key: str, value: Any) -> None:
    node = d
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise SweepError(f"cannot set {key!r}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _get_dotted(d: dict, key: str, default=None):
    node = d
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_set(text: str) -> tuple[str, Any]:
    """'data.batch_size=64' -> ('data.batch_size', 64); the value is parsed as YAML."""
    if "=" not in text:
        raise SweepError(f"--set {text!r} is not key=value (e.g. data.batch_size=64)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_base(path: Path, _seen: tuple = ()) -> dict:
    """A base trainer config; ``extends: OTHER.yaml`` (relative to the file) merges it over OTHER.

    Why: the CPU sweeps should train the project's own CPU recipe (configs/imagenette_cpu.yaml) and
    state only what a sweep changes, so the recipe has one source of truth.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise SweepError(f"{path}: 'extends' loops back to itself")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent:
        data = _deep_merge(read_base(path.parent / parent, (*_seen, path)), data)
    return data


@dataclass
class Point:
    """One planned run of a sweep: its name, the varied value, the paper row it maps to, its config."""

    name: str
    value: Any
    paper: str | None
    overrides: dict
    config: dict = field(repr=False)

    @property
    def epochs(self) -> int:
        return int(self.config["epochs"])

    def config_hash(self) -> str:
        """Hash of the settings that define the experiment (not where it is written)."""
        flat = {k: v for k, v in _flatten(self.config).items() if k != "run_dir"}
        return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


# where and how often files are written, and how many CPU threads / loader workers compute it
_NOT_THE_EXPERIMENT = ("run_dir", "checkpoint.", "log.", "data.num_workers", "threads")


def experiment_key(config: dict) -> str:
    """Hash of what a run computes: the trainer's resolved config (defaults filled in, so a key set
    to its default value counts as the default), without where and how often it writes files."""
    resolved = copy.deepcopy(config)
    try:
        import inspect

        from model import MaskedAutoencoderViT, model_config
        from trainer.config import from_dict
        from trainer.pretrain import model_kwargs
        cfg = from_dict(resolved, "sweep point")
        resolved = cfg.to_dict()
        # the model's constructor keywords as the trainer builds it, over the preset's and the
        # constructor's defaults
        defaults = {k: v.default for k, v in inspect.signature(MaskedAutoencoderViT).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        resolved["model"] = {"name": cfg.model.name,
                             **defaults, **model_config(cfg.model.name, **model_kwargs(cfg))}
    except Exception:  # no trainer or model, or a config they reject: hash what we have
        pass
    flat = {k: v for k, v in _flatten(resolved).items() if not k.startswith(_NOT_THE_EXPERIMENT)}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(spec: dict, preset: str = "cpu", base_config: str | Path | None = None, epochs: int | None = None,
         sets: list[str] | tuple = (), sweep_dir: Path | None = None) -> list[Point]:
    """Resolve every point of ``spec`` under ``preset`` into a full trainer config (see module doc)."""
    if preset not in spec["presets"]:
        raise SweepError(f"sweep {spec['name']!r} has no preset {preset!r}; presets: {', '.join(spec['presets'])}")
    pre = spec["presets"][preset] or {}
    base_path = Path(base_config) if base_config else Path(spec["_path"]).parent / pre.get("base", f"_base_{preset}.yaml")
    base = read_base(base_path)
    for key, value in (pre.get("set") or {}).items():
        _set_dotted(base, key, value)
    if pre.get("epochs") is not None:
        base["epochs"] = int(pre["epochs"])
    if epochs is not None:
        base["epochs"] = int(epochs)
    for text in sets:
        key, value = parse_set(text)
        _set_dotted(base, key, value)

    points = []
    for p in _spec_points(spec, pre):
        cfg = copy.deepcopy(base)
        for key, value in p["set"].items():
            _set_dotted(cfg, key, value)
        _fit_schedule(cfg, evals_on=spec.get("evals", True))
        if sweep_dir is not None:
            cfg["run_dir"] = str(Path(sweep_dir) / p["name"])
        points.append(Point(name=str(p["name"]), value=p["value"], paper=p.get("paper"),
                            overrides=dict(p["set"]), config=cfg))
    return points


def _fit_schedule(cfg: dict, evals_on: bool) -> None:
    """Evals and reconstructions once at the end (or never), warm-up no longer than the run."""
    n = int(cfg.get("epochs", 1))
    evals = cfg.setdefault("evals", {})
    recons = cfg.setdefault("recons", {})
    if not evals_on:
        evals["every"] = 0
        recons["every"] = 0
    else:
        # every = n: evaluate (and sample reconstructions) after the last epoch only -- a sweep needs
        # the final numbers, and per-epoch evals would cost more than the training at CPU scale
        evals["every"] = n
        recons["every"] = n if recons.get("every", 1) else 0
    optim = cfg.setdefault("optim", {})
    if float(optim.get("warmup_epochs", 0)) > n:
        optim["warmup_epochs"] = max(n / 10, min(1.0, n / 2))


# ----------------------------------------------------------------------------- reading results
def _status_text(status) -> str:
    if isinstance(status, dict):
        status = status.get("status", status.get("state"))
    return str(status) if status else "unknown"


def _open_run(run_dir: Path):
    """runstore.open(run_dir), or None when the directory holds no readable run yet."""
    import runstore
    if not Path(run_dir).is_dir():
        return None
    try:
        return runstore.open(run_dir)
    except Exception:
        return None


def _epochs_done(run, run_dir: Path | None = None) -> int:
    """Epoch a run would continue in: the newest checkpoint's, from the run store's index or, when
    a kill fell between writing a checkpoint and indexing it, from the file name (ckpt-eEEEE-...)."""
    done = 0
    if run is not None:
        try:
            ck = run.checkpoints()
            if "epoch" in ck and len(ck):
                done = int(pd.to_numeric(ck["epoch"], errors="coerce").fillna(0).max())
        except Exception:
            pass
        run_dir = run_dir or Path(run.path)
    if run_dir is not None and (Path(run_dir) / "checkpoints").is_dir():
        for f in (Path(run_dir) / "checkpoints").glob("ckpt-e*-s*.pth"):
            try:
                done = max(done, int(f.name.split("-")[1][1:]))
            except (IndexError, ValueError):
                continue
    return done


def _param_counts(cfg: dict) -> tuple[float, float]:
    """(encoder, total) trainable parameters in millions, counted on the meta device (no memory)."""
    key = json.dumps({"model": cfg.get("model", {}), "img": _get_dotted(cfg, "data.image_size")},
                     sort_keys=True, default=str)
    return _param_counts_cached(key)


@functools.lru_cache(maxsize=256)
def _param_counts_cached(key: str) -> tuple[float, float]:
    cfg = json.loads(key)
    cfg = {"model": cfg["model"], "data": {"image_size": cfg["img"]}}
    try:
        import torch
        from model import create_model
        m = dict(cfg.get("model", {}))
        name = m.pop("name")
        m.pop("mask_ratio", None)
        if "target" in m:  # as trainer.pretrain.build_model: an explicit target wins over norm_pix_loss
            m.pop("norm_pix_loss", None)
        img = _get_dotted(cfg, "data.image_size")
        if img:
            m["img_size"] = img
        with torch.device("meta"):
            model = create_model(name, **m)
        enc = sum(p.numel() for n, p in model.named_parameters()
                  if p.requires_grad and not n.startswith(("decoder", "mask_token")))
        tot = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return enc / 1e6, tot / 1e6
    except Exception:
        return math.nan, math.nan


def _last_eval(evals: pd.DataFrame, kind: str) -> float:
    if evals.empty or "kind" not in evals or "top1" not in evals:
        return math.nan
    sel = evals[evals["kind"] == kind]
    if sel.empty:
        return math.nan
    # A point's result is its trainer's online eval (fixed subset, every epoch). A record an eval
    # CLI added later names its checkpoint; it may be on other data, so it is used only when the
    # point has nothing else.
    if "settings" in sel:
        online = sel[~sel["settings"].fillna("").astype(str).str.contains('"checkpoint"')]
        sel = online if len(online) else sel
    if "epoch" in sel:
        sel = sel.sort_values("epoch", kind="stable")
    return float(sel["top1"].iloc[-1])


def _timing(records: pd.DataFrame, point: str) -> tuple[float, float]:
    """(wall seconds, seconds per trained epoch without evals) over a point's ended invocations.

    An invocation killed with SIGKILL leaves no end record, so its time is not counted (the epochs
    it finished are then credited to no one: the resumed invocation counts only its own epochs).
    """
    if records is None or records.empty or "invocation_s" not in records:
        return math.nan, math.nan
    ended = records[(records["point"] == point) & (records["status"] != "running")]
    num = lambda col: pd.to_numeric(ended[col], errors="coerce").fillna(0.0) if col in ended else 0.0
    wall = float(pd.to_numeric(ended["invocation_s"], errors="coerce").sum())
    epochs = float((num("epochs_after") - num("epochs_before")).clip(lower=0).sum()) if len(ended) else 0.0
    eval_s = float(num("eval_s").sum()) if len(ended) else 0.0
    if not len(ended):
        return math.nan, math.nan
    return wall, ((wall - eval_s) / epochs if epochs > 0 else math.nan)


def point_row(point: Point, sweep_dir: Path, records: pd.DataFrame | None = None) -> dict:
    """One row of the sweep table for ``point``, read from its run store and the sweep records."""
    run_dir = Path(sweep_dir) / point.name
    run = _open_run(run_dir)
    enc_m, tot_m = _param_counts(point.config)
    row = {
        "point": point.name, "value": point.value, "paper_setting": point.paper,
        "model": _get_dotted(point.config, "model.name"), "encoder_params_m": enc_m, "params_m": tot_m,
        "epochs": point.epochs, "epochs_done": 0, "final_loss": math.nan, "knn_top1": math.nan,
        "linprobe_top1": math.nan, "s_per_epoch": math.nan, "images_per_s": math.nan,
        "wall_s": math.nan, "status": "pending", "run_dir": str(run_dir), "reused_from": "",
        "n_val": math.nan,
    }
    records = store.records(sweep_dir) if records is None else records
    row["wall_s"], row["s_per_epoch"] = _timing(records, point.name)
    if len(records) and "reused_from" in records:
        mine = records.loc[records["point"] == point.name, "reused_from"].dropna().astype(str)
        mine = mine[mine != ""]
        row["reused_from"] = mine.iloc[-1] if len(mine) else ""
    if run is None:
        return row
    row["status"] = _status_text(getattr(run, "status", None))
    row["epochs_done"] = _epochs_done(run)
    try:
        metrics = run.metrics()
    except Exception:
        metrics = pd.DataFrame()
    if not metrics.empty and "loss" in metrics:
        last = metrics
        if "epoch" in metrics:
            # the trainer logs fractional epochs (epoch + step/steps_per_epoch): the last epoch's
            # steps are those in (E-1, E]; the final loss is their mean, not one noisy step
            ep = pd.to_numeric(metrics["epoch"], errors="coerce")
            last = metrics[np.ceil(ep - 1e-9) == np.ceil(ep.max() - 1e-9)]
        row["final_loss"] = float(pd.to_numeric(last["loss"], errors="coerce").mean())
        if "images_per_s" in metrics:
            ips = pd.to_numeric(metrics["images_per_s"], errors="coerce").dropna()
            if len(ips):
                row["images_per_s"] = float(ips.median())
    try:
        evals = run.evals()
    except Exception:
        evals = pd.DataFrame()
    row["knn_top1"] = _last_eval(evals, "knn")
    row["linprobe_top1"] = _last_eval(evals, "linprobe")
    row["n_val"] = _eval_n_val(evals)
    return row


def _eval_n_val(evals: pd.DataFrame) -> float:
    """Val images behind the point's accuracies (the newest eval record naming ``n_val`` in its
    settings); experiments.trends needs it for the binomial standard error. NaN when none says."""
    if evals.empty or "settings" not in evals:
        return math.nan
    settings = evals["settings"].fillna("").astype(str)
    online = settings[~settings.str.contains('"checkpoint"')]   # as _last_eval: the online evals first
    for text in reversed(list(online if len(online) else settings)):
        try:
            n = json.loads(text).get("n_val") if text else None
        except (ValueError, AttributeError):
            continue
        if isinstance(n, (int, float)) and n > 0:
            return float(n)
    return math.nan


def _plan_points(plan_doc: dict) -> list[Point]:
    return [Point(name=p["name"], value=p["value"], paper=p.get("paper"), overrides=p.get("set", {}),
                  config=p["config"]) for p in plan_doc.get("points", [])]


def sweep_table(sweep_dir) -> pd.DataFrame:
    """The sweep table of a sweep directory, rebuilt from its plan, run stores and sweep records.

    One row per planned point in plan order, columns ``TABLE_COLUMNS``; points not started yet have
    status ``pending``. Top-1 values are as the evals record them. ``table.attrs`` carries the plan's
    ``sweep``, ``title``, ``number``, ``preset``, ``axis`` and ``paper`` keys (for figures). Safe to
    call while the sweep runs; never writes.
    """
    sweep_dir = Path(sweep_dir)
    plan_doc = store.read_plan(sweep_dir)
    records = store.records(sweep_dir)
    rows = [point_row(p, sweep_dir, records) for p in _plan_points(plan_doc)]
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


# ----------------------------------------------------------------------------- running
def host_info() -> dict:
    """Where the sweep ran: host, CPUs, torch threads, GPU (the report states the compute used)."""
    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception:
        pass
    return info


# The lr schedule of a point that has trained follows from these: the trainer refuses to resume
# under other values (exit 4), so the sweep refuses them for such points before launching anything.
_SCHEDULE_KEYS = ("epochs", "optim.warmup_epochs")


def _check_schedule(sweep_dir: Path, p: Point, old_config: dict) -> None:
    if not _has_checkpoint(sweep_dir / p.name):
        return  # not trained yet: its schedule may still change with the sweep's --epochs
    a, b = _flatten(old_config), _flatten(p.config)
    for k in _SCHEDULE_KEYS:
        if a.get(k) != b.get(k):
            raise SweepError(
                f"{sweep_dir / store.PLAN}: point {p.name!r} has trained with {k}={a.get(k)!r}, now "
                f"{k}={b.get(k)!r}: its lr schedule would change mid-run. Resume with the original "
                f"--epochs, or write this sweep elsewhere with --out.")


def _check_plan(sweep_dir: Path, plan_doc: dict, points: list[Point]) -> None:
    """A resumed sweep must keep each point's experiment settings; epochs may grow only for points
    that have not trained yet (a trained point's schedule is fixed, see `_check_schedule`)."""
    old = {p["name"]: p for p in plan_doc.get("points", [])}
    for p in points:
        if p.name not in old:
            continue
        _check_schedule(sweep_dir, p, old[p.name]["config"])
        a = {k: v for k, v in _flatten(old[p.name]["config"]).items() if k not in ("run_dir", "epochs")}
        b = {k: v for k, v in _flatten(p.config).items() if k not in ("run_dir", "epochs")}
        harmless = ("evals.", "recons.", "checkpoint.", "log.", "data.num_workers", "data.train_path",
                    "data.val_path", "optim.warmup_epochs", "threads")
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(harmless)]
        if diff:
            k = diff[0]
            raise SweepError(
                f"{sweep_dir / store.PLAN}: point {p.name!r} was started with {k}={a.get(k)!r}, "
                f"now {k}={b.get(k)!r} ({len(diff)} key(s) differ). Resume with the original settings, "
                f"or write this sweep elsewhere with --out.")


def _is_done(point: Point, run) -> bool:
    if run is None or _status_text(getattr(run, "status", None)) != "finished":
        return False
    try:
        planned = int(run.config.get("epochs", -1))
    except Exception:
        planned = -1
    return planned >= point.epochs


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.pth")) if (run_dir / "checkpoints").is_dir() else False


def _eval_seconds(run, since_epoch: int) -> float:
    """Seconds spent in online evals after ``since_epoch``. Each record's ``seconds`` includes the
    shared feature extraction, so per epoch the longest record is counted (kNN itself is ~instant)."""
    try:
        ev = run.evals()
    except Exception:
        return 0.0
    if ev.empty or "seconds" not in ev or "epoch" not in ev:
        return 0.0
    ev = ev[pd.to_numeric(ev["epoch"], errors="coerce") > since_epoch]
    secs = pd.to_numeric(ev["seconds"], errors="coerce").fillna(0.0)
    return float(secs.groupby(ev["epoch"]).max().sum()) if len(ev) else 0.0


def _missing_final_evals(point: Point, run) -> list[str]:
    """Eval kinds planned after the last epoch but absent from the run store."""
    ev_cfg = point.config.get("evals", {})
    if not ev_cfg.get("every"):
        return []
    wanted = [k for k in ("knn", "linprobe") if ev_cfg.get(k, True)]
    try:
        ev = run.evals()
    except Exception:
        ev = pd.DataFrame()
    have = set(ev.loc[pd.to_numeric(ev["epoch"], errors="coerce") == point.epochs, "kind"]) \
        if {"epoch", "kind"} <= set(ev.columns) else set()
    return [k for k in wanted if k not in have]


def ensure_final_evals(point: Point, run_dir: Path, echo=print) -> bool:
    """Run the final online evals of a finished point whose run store lacks them; True if it did.

    Why: the trainer saves its last checkpoint before the final evals, so a sweep killed during
    those evals resumes into an already-finished run that never evaluates. The same records as the
    trainer's (``evals.online.epoch_evals`` on the final checkpoint) are appended to the run store.
    """
    run = _open_run(run_dir)
    if run is None or _status_text(run.status) != "finished":
        return False
    missing = _missing_final_evals(point, run)
    ckpt = run.latest_checkpoint()
    if not missing or ckpt is None:
        return False
    import runstore
    import torch
    from evals.online import epoch_evals
    from model import load_checkpoint
    echo(f"[sweep] {point.name}: final evals {missing} missing from the run store; running them on {ckpt.name}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(ckpt).to(device).eval()
    ev_cfg = dict(point.config["evals"], knn="knn" in missing, linprobe="linprobe" in missing)
    for rec in epoch_evals(model, ev_cfg, point.config["data"], device):
        rec = dict(rec)
        rec.pop("epoch", None)
        runstore.append_eval(run_dir, epoch=point.epochs, **rec)
    return True


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
        for q in _plan_points(doc):
            if q.epochs != point.epochs or experiment_key(q.config) != key:
                continue
            run = _open_run(other / q.name)
            if _is_done(q, run) and not _missing_final_evals(q, run):
                return other, other / q.name, q.name
    return None


def reuse_point(point: Point, sweep_dir: Path, donor: tuple[Path, Path, str], echo=print) -> None:
    """Copy the donor's run into ``sweep_dir/POINT`` (through a temporary directory and a rename, so
    a kill never leaves a half copy that looks finished) and log it with the donor's timing."""
    import shutil
    donor_sweep, donor_run, donor_point = donor
    run_dir = Path(sweep_dir) / point.name
    tmp = run_dir.with_name(f".{run_dir.name}.reuse-tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(donor_run, tmp)
    cfg_file = tmp / "config.yaml"
    if cfg_file.is_file():  # the copy's own config says where it lives now
        doc = yaml.safe_load(cfg_file.read_text()) or {}
        if isinstance(doc, dict) and "run_dir" in doc:
            doc["run_dir"] = str(run_dir)
            cfg_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(tmp, run_dir)
    recs = store.records(donor_sweep)
    wall, _ = _timing(recs, donor_point)
    ended = recs[(recs["point"] == donor_point) & (recs["status"] != "running")] if len(recs) else recs
    eval_s = float(pd.to_numeric(ended["eval_s"], errors="coerce").fillna(0).sum()) \
        if len(ended) and "eval_s" in ended else 0.0
    echo(f"[sweep] {point.name}: same experiment as {donor_run} (finished); copied it instead of training")
    store.log_end(sweep_dir, point.name, point.value, run_dir, "done", _results(point_row(point, sweep_dir)),
                  rc=0, invocation_s=wall if wall == wall else 0.0, epochs_before=0, epochs_after=point.epochs,
                  eval_s=round(eval_s, 3), reused_from=str(donor_run))


def _run_point(point: Point, cfg_path: Path, run_dir: Path, launcher: str | None) -> int:
    """Train one point (resuming when it has a checkpoint); return the trainer's exit code."""
    argv = ["--config", str(cfg_path), f"run_dir={run_dir}"]
    if _has_checkpoint(run_dir):
        argv.append("--resume")
    elif run_dir.exists():
        # started but killed before its first checkpoint: nothing worth keeping, start it cleanly
        import shutil
        shutil.rmtree(run_dir)
    if launcher:
        cmd = shlex.split(launcher)
        if cmd == ["python"]:
            cmd = [sys.executable]
        return subprocess.call([*cmd, "-m", "trainer.pretrain", *argv])
    from trainer.pretrain import main as pretrain_main
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


def _results(row: dict) -> dict:
    """The numbers of a table row that go into the sweep record."""
    return {k: row[k] for k in ("encoder_params_m", "params_m", "final_loss", "knn_top1", "linprobe_top1",
                                "images_per_s")}


def validate(points: list[Point]) -> None:
    """Check every point's config with the trainer's own validation before anything runs."""
    try:
        from trainer.config import ConfigError, from_dict
    except ImportError:  # trainer not installed: the trainer will report errors itself
        return
    for p in points:
        try:
            from_dict(copy.deepcopy(p.config), f"sweep point {p.name}")
        except ConfigError as exc:
            raise SweepError(str(exc)) from None


def data_problem(points: list[Point]) -> str | None:
    """The first data path a point would fail on at its start (the trainer's own check, done once
    here for all points, so a sweep of 20 points does not start 20 trainers that fail alike)."""
    try:
        from trainer.config import ConfigError, from_dict
        from trainer.preflight import check_data_paths
    except ImportError:  # trainer not installed: the trainer will report errors itself
        return None
    seen = set()
    for p in points:
        data = p.config.get("data", {})
        key = (data.get("backend"), data.get("train_path"), data.get("val_path"))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_data_paths(from_dict(copy.deepcopy(p.config), f"sweep point {p.name}"))
        except ConfigError as exc:
            return f"point {p.name}: {exc}"
    return None


def default_out(name: str, preset: str) -> Path:
    """runs/sweeps/NAME for the cpu preset, runs/sweeps/NAME_PRESET otherwise (relative to the cwd)."""
    return Path("runs") / "sweeps" / (name if preset == "cpu" else f"{name}_{preset}")


def run_sweep(name: str, preset: str = "cpu", out: str | Path | None = None, base_config=None,
              epochs: int | None = None, sets=(), only: list[str] | None = None, dry_run: bool = False,
              launcher: str | None = None, reuse: bool = True, echo=print) -> pd.DataFrame:
    """Run (or resume) sweep ``name``; return its table. See the module doc for the layout.

    Raises SweepError on a bad spec or config, or when a resumed sweep's settings changed; a point
    whose trainer fails is marked ``failed`` and the sweep moves on; a preempted point (trainer exit
    code 75) stops the sweep with ``SweepPreempted`` so that a scheduler can requeue it. With
    ``reuse``, a point never started here whose experiment finished in a sibling sweep is copied.
    """
    spec = load_spec(name)
    sweep_dir = Path(out) if out else default_out(spec["name"], preset)
    planned = plan(spec, preset, base_config, epochs, sets, sweep_dir=sweep_dir)
    all_names = [p.name for p in planned]
    points = planned
    if only:
        unknown = set(only) - set(all_names)
        if unknown:
            raise SweepError(f"unknown point(s) {sorted(unknown)}; points: {', '.join(all_names)}")
        points = [p for p in planned if p.name in only]
    validate(planned)
    missing = data_problem(points)
    if missing and not dry_run:
        raise SweepError(f"{missing}; nothing was run (pass the data with --set data.train_path=... "
                         f"--set data.val_path=... or --base-config FILE)")

    old_plan = None
    if store.is_sweep_dir(sweep_dir):
        old_plan = store.read_plan(sweep_dir)
        if old_plan.get("sweep") != spec["name"]:
            raise SweepError(f"{sweep_dir}: holds sweep {old_plan.get('sweep')!r}, not {spec['name']!r}; "
                             f"choose another --out")
        _check_plan(sweep_dir, old_plan, planned)

    if dry_run:
        echo(f"sweep {spec['name']} ({spec.get('title', '')}), preset {preset}, dir {sweep_dir}")
        if missing:
            echo(f"  warning: {missing}: the sweep would stop before its first point")
        for p in points:
            run = _open_run(sweep_dir / p.name)
            state = "done" if _is_done(p, run) else ("partial" if run is not None else "todo")
            donor = find_donor(p, sweep_dir) if reuse and run is None else None
            if donor is not None:
                state = f"reuse ({donor[1]})"
            sets_txt = " ".join(f"{k}={v}" for k, v in p.overrides.items())
            echo(f"  {p.name:24s} {state:8s} epochs={p.epochs:<5d} {sets_txt}")
        return pd.DataFrame([{"point": p.name, "value": p.value, "epochs": p.epochs} for p in points])

    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "configs").mkdir(exist_ok=True)
    merged = {p["name"]: p for p in (old_plan or {}).get("points", [])}
    for p in planned:  # the plan holds every point (the table lists the ones not run yet as pending)
        merged[p.name] = {"name": p.name, "value": p.value, "paper": p.paper, "set": p.overrides,
                          "config": p.config, "hash": p.config_hash()}
    store.write_plan(sweep_dir, {
        "sweep": spec["name"], "number": spec.get("number"), "title": spec.get("title", spec["name"]),
        "preset": preset, "axis": spec.get("axis", {}), "paper": spec.get("paper"),
        "spec_path": spec["_path"], "launcher": launcher,
        "created": (old_plan or {}).get("created", time.time()), "updated": time.time(),
        "host": host_info(), "points": [merged[n] for n in all_names if n in merged],
    })

    from tqdm import tqdm
    bar = tqdm(points, desc=f"sweep {spec['name']}", unit="point", disable=not sys.stderr.isatty())
    for p in bar:
        bar.set_postfix_str(p.name)
        run_dir = sweep_dir / p.name
        run = _open_run(run_dir)
        if _is_done(p, run):
            if ensure_final_evals(p, run_dir, echo):
                store.log_end(sweep_dir, p.name, p.value, run_dir, "done", _results(point_row(p, sweep_dir)),
                              rc=0, invocation_s=0.0, epochs_before=p.epochs, epochs_after=p.epochs, eval_s=0.0)
            else:
                echo(f"[sweep {spec['name']}] {p.name}: finished earlier, skipped")
            continue
        donor = find_donor(p, sweep_dir) if reuse and run is None else None
        if donor is not None:
            reuse_point(p, sweep_dir, donor, echo)
            continue
        cfg_path = sweep_dir / "configs" / f"{p.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(p.config, sort_keys=False))
        before = _epochs_done(run, run_dir) if _has_checkpoint(run_dir) else 0
        echo(f"[sweep {spec['name']}] {p.name}: training {p.epochs} epochs"
             f"{f' (resuming after epoch {before})' if before else ''} -> {run_dir}")
        store.log_start(sweep_dir, p.name, p.value, run_dir, epochs_before=before, config_hash=p.config_hash())
        t0 = time.time()
        error = None
        try:
            rc = _run_point(p, cfg_path, run_dir, launcher)
        except Exception as exc:  # one broken point must not lose the others
            traceback.print_exc()
            rc, error = 1, f"{type(exc).__name__}: {exc}"
        wall = time.time() - t0
        run = _open_run(run_dir)
        status = "done" if rc == 0 and _is_done(p, run) else ("preempted" if rc == EXIT_PREEMPTED else "failed")
        if status == "done":
            ensure_final_evals(p, run_dir, echo)
        store.log_end(sweep_dir, p.name, p.value, run_dir, status, _results(point_row(p, sweep_dir)), rc=rc, error=error,
                      invocation_s=round(wall, 3), epochs_before=before, epochs_after=_epochs_done(run, run_dir),
                      eval_s=round(_eval_seconds(run, before), 3) if run is not None else 0.0)
        if status == "preempted":
            raise SweepPreempted(f"point {p.name} was preempted; run the same command again to resume")
        if status == "failed":
            echo(f"[sweep {spec['name']}] {p.name}: FAILED (exit code {rc}{', ' + error if error else ''}); "
                 f"see the trainer's messages above")
    return sweep_table(sweep_dir)


class SweepPreempted(RuntimeError):
    """The trainer exited with code 75 (preempted); the sweep stops so it can be requeued."""


# ----------------------------------------------------------------------------- CLI
def _format_table(table: pd.DataFrame) -> str:
    cols = ["point", "value", "encoder_params_m", "epochs_done", "final_loss", "knn_top1", "linprobe_top1",
            "s_per_epoch", "status"]
    return table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def main(argv: list[str] | None = None) -> int:
    import textwrap

    from evals.inputs import RawHelpFormatter

    ap = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__, formatter_class=RawHelpFormatter,
        epilog=textwrap.fill(
               "Writes: everything under the sweep directory (--out; default runs/sweeps/NAME, "
               "runs/sweeps/NAME_PRESET for other presets, relative to the current directory): "
               "plan.json, configs/POINT.yaml, one run directory per point (POINT/: config.yaml, "
               "checkpoints/, metrics.zarr, evals.zarr, recons.zarr) and the sweep table "
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
    ap.add_argument("--points", help="comma-separated subset of points to run (default: all)")
    ap.add_argument("--launcher", help="run each point as a subprocess under this launcher, e.g. "
                                       "'python' or 'torchrun --nproc_per_node=8' (default: in this process)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and each point's state; run nothing")
    ap.add_argument("--no-reuse", action="store_true",
                    help="train every point, even when a sibling sweep already finished the same experiment")
    args = ap.parse_args(argv)

    if args.list or not args.name:
        for n in list_sweeps():
            spec = load_spec(n)
            print(f"{n:14s} {spec.get('title', '')}  (presets: {', '.join(spec['presets'])})")
        return 0 if args.list else 2
    try:
        table = run_sweep(args.name, preset=args.preset, out=args.out, base_config=args.base_config,
                          epochs=args.epochs, sets=args.set, dry_run=args.dry_run, launcher=args.launcher,
                          reuse=not args.no_reuse,
                          only=args.points.split(",") if args.points else None)
    except SweepPreempted as exc:
        print(f"experiments.sweep: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (SweepError, store.SweepDirError) as exc:
        print(f"experiments.sweep: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print(_format_table(table))
    ran = table if not args.points else table[table["point"].isin(args.points.split(","))]
    return 0 if (ran["status"] == "finished").all() else 1


if __name__ == "__main__":
    sys.exit(main())
