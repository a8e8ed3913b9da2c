"""A sweep's points, each resolved into a full trainer config and checked by the trainer's own rules.

Config precedence, lowest first: base config (the preset's, or ``--base-config``) < the preset's
``set`` < ``--epochs`` < ``--set key=value`` < the point's own keys (a sweep's varied key always
wins, e.g. ``epochs`` in the ``epochs`` sweep) < the seed (``seeds``: the CLI's ``--seeds``).

Seeds: with ``seeds=[0, 1]`` every point is planned once per seed, each a run of its own. The first
seed's run keeps the point's name as its run directory (so sweeps planned before seeds existed
resume and reuse as they did); the others are ``POINT_seedK``. ``Point.name`` is the run's name
(its directory, its sweep records, its config file), ``Point.point`` the point it is a seed of
(the sweep table's ``point`` column, shared by all seeds of a point).
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.dotted import flatten
from experiments.spec import SweepError, parse_set, read_base, set_key, spec_points
from model import MaskedAutoencoderViT, kwargs_from_config, model_config
from trainer.config import ConfigError, from_dict
from trainer.preflight import check_data_paths


@dataclass
class Point:
    """One planned run of a sweep: its run name, the varied value, the paper row it maps to, its
    config, and the point it is a seed of (``point``; defaults to ``name``)."""

    name: str
    value: Any
    paper: str | None
    overrides: dict
    config: dict = field(repr=False)
    point: str = ""

    def __post_init__(self) -> None:
        self.point = self.point or self.name

    @property
    def epochs(self) -> int:
        return int(self.config["epochs"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def config_hash(self) -> str:
        """Hash of the settings that define the experiment (not where it is written)."""
        flat = {k: v for k, v in flatten(self.config).items() if k != "run_dir"}
        return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_points(plan_doc: dict) -> list[Point]:
    """The points of a sweep's plan.json, in plan order."""
    return [Point(name=p["name"], value=p["value"], paper=p.get("paper"), overrides=p.get("set", {}),
                  config=p["config"], point=p.get("point", "")) for p in plan_doc.get("points", [])]


def seed_run_name(point: str, seed: int, first: bool) -> str:
    """The run name of ``point`` at ``seed``: the point's own name for the first seed, else POINT_seedK."""
    return point if first else f"{point}_seed{seed}"


# where and how often files are written, and how many CPU threads / loader workers compute it
_NOT_THE_EXPERIMENT = ("run_dir", "checkpoint.", "log.", "data.num_workers", "threads")

# the model constructor's own defaults: a key left out and a key set to its default are one experiment
_CONSTRUCTOR_DEFAULTS = {k: v.default for k, v in inspect.signature(MaskedAutoencoderViT).parameters.items()
                         if v.default is not inspect.Parameter.empty}


def experiment_key(config: dict) -> str:
    """Hash of what a run computes: the trainer's resolved config (defaults filled in, so a key set
    to its default value counts as the default), without where and how often it writes files.

    ConfigError (the trainer's) for a config the trainer rejects, KeyError for an unknown model:
    a key computed from anything but the resolved config would silently stop matching."""
    cfg = from_dict(copy.deepcopy(config), "sweep point")
    resolved = cfg.to_dict()
    # the model's constructor keywords as the trainer builds it, over the preset's and the
    # constructor's defaults
    resolved["model"] = {"name": cfg.model.name, **_CONSTRUCTOR_DEFAULTS,
                         **model_config(cfg.model.name, **kwargs_from_config(resolved))}
    flat = {k: v for k, v in flatten(resolved).items() if not k.startswith(_NOT_THE_EXPERIMENT)}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_config(spec: dict, preset: str, base_config, epochs: int | None, sets, echo=None) -> dict:
    """The preset's base config with the preset's ``set``, ``--epochs`` and ``--set`` applied.

    A base's wall-clock budget (``budget_minutes``, the CPU presets') is dropped: it lets the trainer
    choose the epoch count from the machine's speed, so a slower point would train fewer epochs than
    the others and the sweep would not compare at one schedule. ``--set budget_minutes=M`` (or the
    preset's ``set``) puts one back: the points then compare at a fixed wall-clock."""
    pre = spec["presets"][preset] or {}
    base_path = Path(base_config) if base_config else Path(spec["_path"]).parent / pre.get("base", f"_base_{preset}.yaml")
    base = read_base(base_path)
    budget = base.pop("budget_minutes", None)
    for key, value in (pre.get("set") or {}).items():
        set_key(base, key, value)
    if pre.get("epochs") is not None:
        base["epochs"] = int(pre["epochs"])
    if epochs is not None:
        base["epochs"] = int(epochs)
    for text in sets:
        key, value = parse_set(text)
        set_key(base, key, value)
    if budget and echo is not None and "budget_minutes" not in base:
        echo(f"{base_path}: budget_minutes={budget} is off in this sweep: every point trains its planned "
             f"epochs (--set budget_minutes={budget} compares the points at a fixed wall-clock instead)")
    return base


def plan(spec: dict, preset: str = "cpu", base_config: str | Path | None = None, epochs: int | None = None,
         sets: list[str] | tuple = (), sweep_dir: Path | None = None, values: list | None = None,
         seeds: list[int] | None = None, echo=None) -> list[Point]:
    """Resolve every point of ``spec`` under ``preset`` into a full trainer config (see module doc):
    one run per point and seed (``seeds``; None: one run at the config's own seed), the points from
    ``values`` of the varied key when given, else the spec's. ``echo`` hears about a base config's
    wall-clock budget being dropped (see ``_base_config``)."""
    if preset not in spec["presets"]:
        raise SweepError(f"sweep {spec['name']!r} has no preset {preset!r}; presets: {', '.join(spec['presets'])}")
    base = _base_config(spec, preset, base_config, epochs, sets, echo)
    points = []
    for p in spec_points(spec, spec["presets"][preset] or {}, values):
        cfg = copy.deepcopy(base)
        for key, value in p["set"].items():
            set_key(cfg, key, value)
        _fit_schedule(cfg, evals_on=spec.get("evals", True))
        for i, seed in enumerate(seeds if seeds is not None else [None]):
            run_cfg = copy.deepcopy(cfg)
            if seed is not None:
                run_cfg["seed"] = int(seed)
            name = seed_run_name(str(p["name"]), seed, first=i == 0)
            if sweep_dir is not None:
                run_cfg["run_dir"] = str(Path(sweep_dir) / name)
            points.append(Point(name=name, value=p["value"], paper=p.get("paper"), overrides=dict(p["set"]),
                                config=run_cfg, point=str(p["name"])))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"{spec['_path']}: two runs would share the directory {clash!r} (a point named like "
                         f"another point's seed run); rename the point")
    return points


def plan_seeds(plan_doc: dict) -> list[int]:
    """The seeds a plan.json was planned with (plans written before ``seeds`` existed: the seeds of
    their points, in order)."""
    if plan_doc.get("seeds") is not None:
        return [int(k) for k in plan_doc["seeds"]]
    return list(dict.fromkeys(int(p.get("config", {}).get("seed", 0)) for p in plan_doc.get("points", [])))


def _fit_schedule(cfg: dict, evals_on: bool) -> None:
    """Evals and reconstructions once at the end (or never), warm-up no longer than the run."""
    try:
        n = int(cfg.get("epochs", 1))
    except (TypeError, ValueError):  # not a number: left for validate() to name with the trainer's message
        return
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


def validate(points: list[Point]) -> None:
    """Check every point's config with the trainer's own validation, and its model name with the
    model registry (the trainer would stop on it only when building the model), before anything runs."""
    for p in points:
        try:
            cfg = from_dict(copy.deepcopy(p.config), f"sweep point {p.name}")
        except ConfigError as exc:
            raise SweepError(str(exc)) from None
        try:
            model_config(cfg.model.name)
        except KeyError as exc:
            raise SweepError(f"sweep point {p.name}: 'model.name': {exc.args[0]}") from None


def data_problem(points: list[Point]) -> str | None:
    """The first data path a point would fail on at its start (the trainer's own check, done once
    here for all points, so a sweep of 20 points does not start 20 trainers that fail alike)."""
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
    """runs/sweeps/NAME for the cpu preset, runs/sweeps/NAME_PRESET for other presets (relative to the cwd)."""
    return Path("runs") / "sweeps" / (name if preset == "cpu" else f"{name}_{preset}")
