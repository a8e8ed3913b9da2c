"""YAML / JSON of configs and records: only plain data in, only safe loaders out.

`plain` turns what callers hold (numpy and torch scalars, tuples, paths) into the types YAML and
JSON store, and refuses anything else by name, so an object never ends up pickled into a file
(`yaml.safe_dump` would fail later, far from the call that caused it). Loading is `yaml.safe_load`
/ `json.load` with the file named in the error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def plain(obj: Any, where: str = "value") -> Any:
    """A config/record as YAML/JSON-safe Python (tuples->lists, numpy->python, Path->str);
    TypeError naming `where` (a dotted path) for anything that is not data."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy/torch 0-d
        return plain(obj.item(), where)
    raise TypeError(f"{where}: cannot store {type(obj).__name__} {obj!r} (use str, numbers, lists, dicts)")


def dump_yaml(obj: Any) -> str:
    """YAML text of a config, keys in their given order, block style (readable, diffable)."""
    return yaml.safe_dump(plain(obj, "config"), sort_keys=False, default_flow_style=False)


def load_yaml(path: str | os.PathLike) -> Any:
    """`yaml.safe_load` of a file; ValueError naming the file for text that is not YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc


def dump_json(obj: Any) -> str:
    """JSON text of a record (NaN allowed: metrics may hold it)."""
    return json.dumps(plain(obj, "record"), indent=1, allow_nan=True)


def load_json(path: str | os.PathLike, default: Any = None) -> Any:
    """A JSON file's content; `default` when it does not exist; ValueError naming the file for garbage."""
    try:
        with open(Path(path), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
