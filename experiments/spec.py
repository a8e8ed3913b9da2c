"""A sweep's YAML file and the base trainer config it starts from.

A sweep is a YAML file in ``configs/sweeps/`` (or any path): which config keys its points change,
and per preset (``cpu``, ``imagenet``) the base trainer config and the schedule. Points are listed
(``points: [{name, value, set: {KEY: VALUE}, paper}]``) or generated (``vary: KEY`` + ``values``),
for the whole sweep or per preset. ``--values`` (``parse_values``) replaces the generated points'
values; ``--seeds`` (``parse_seeds``) trains every point once per seed (``experiments.plan``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from common.dotted import NotASectionError, set_dotted

ROOT = Path(__file__).resolve().parent.parent
SWEEPS_DIR = ROOT / "configs" / "sweeps"
PRESETS = ("cpu", "imagenet")


class SweepError(ValueError):
    """A sweep spec, a preset or a sweep directory is invalid; the message says which and why."""


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


def _generated(spec: dict, src: dict, values: list) -> list[dict]:
    """Points ``{name, value, set, paper}`` for ``values`` of the varied key (``vary``) of ``src``."""
    key = src.get("vary", spec.get("vary"))
    if not key:
        raise SweepError(f"{spec['_path']}: 'values' needs 'vary' (the config key they set)")
    labels = {**spec.get("paper_labels", {}), **src.get("paper_labels", {})}
    return [{"name": _point_name(key, v), "value": v, "set": {key: v}, "paper": labels.get(v)} for v in values]


def spec_points(spec: dict, preset: dict, values: list | None = None) -> list[dict]:
    """Points of a preset: its own 'points'/'values' or the sweep's shared ones; ``values`` (the
    CLI's ``--values``) replaces the list of values of the varied key."""
    if values is not None:
        if not (preset.get("vary") or spec.get("vary")):
            raise SweepError(f"{spec['_path']}: --values needs a sweep that varies one key ('vary'); "
                             f"this one lists its points (use --points to run some of them)")
        pts = _generated(spec, preset, values)
    else:
        for src in (preset, spec):
            if "points" in src:
                pts = [dict(p) for p in src["points"]]
                break
            if "values" in src:
                pts = _generated(spec, src, src["values"])
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


def set_key(d: dict, key: str, value: Any) -> None:
    """``common.dotted.set_dotted``, with a key that runs into a value as a SweepError."""
    try:
        set_dotted(d, key, value)
    except NotASectionError as exc:
        raise SweepError(f"cannot set {exc.key!r}: {exc.part!r} is a value, not a section") from None


def parse_set(text: str) -> tuple[str, Any]:
    """'data.batch_size=64' -> ('data.batch_size', 64); the value is parsed as YAML."""
    if "=" not in text:
        raise SweepError(f"--set {text!r} is not key=value (e.g. data.batch_size=64)")
    key, raw = text.split("=", 1)
    return key.strip(), _yaml_value(raw)


def _yaml_value(raw: str):
    """``raw`` parsed as a YAML value ('64' -> 64, '0.5' -> 0.5, 'true' -> True, 'abc' -> 'abc')."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def parse_values(text: str) -> list:
    """'10,25,50' -> [10, 25, 50]: ``--values``, each item typed as a YAML value (as ``--set``'s)."""
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
        raise SweepError(f"--values {text!r}: expected comma-separated values, e.g. --values 10,25,50")
    values = [_yaml_value(t) for t in items]
    bad = [t for t, v in zip(items, values) if isinstance(v, (dict, list)) or v is None]
    if bad:
        raise SweepError(f"--values {text!r}: {bad[0]!r} is not a single value (a number, word or true/false)")
    if len({str(v) for v in values}) != len(values):
        raise SweepError(f"--values {text!r}: a value is listed twice")
    return values


def parse_seeds(text: str) -> list[int]:
    """'0,1' -> [0, 1]: ``--seeds``, distinct non-negative integers."""
    try:
        seeds = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1") from None
    if any(k < 0 for k in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text!r}: seeds must be distinct non-negative integers, e.g. --seeds 0,1")
    return seeds


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
