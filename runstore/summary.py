"""One run as one row of a runs table, from its config, metrics and evals (no file access here).

Shared by `Run.summary()` and the inspector's runs table, which reads the same tables through its
own cache; both must count epochs, losses and best accuracies the same way.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from common.values import finite_or_none


def dataset_name(train_path: Any) -> str | None:
    """'data/imagenette_ffcv/train.beton' -> 'imagenette_ffcv'; '.../imagenette/train' -> 'imagenette'."""
    if not train_path:
        return None
    p = Path(str(train_path))
    while p.name and (p.suffix or p.name.lower() in ("train", "training", "val", "images")):
        p = p.parent
    return p.name or None


def _numbers(table: pd.DataFrame, column: str) -> pd.Series:
    """A column as numbers without gaps; empty where the table lacks it (a store that failed to read)."""
    if column not in table:
        return pd.Series(dtype="float64")
    return pd.to_numeric(table[column], errors="coerce").dropna()


def _best(evals: pd.DataFrame, kinds: tuple[str, ...]) -> float | None:
    if "kind" not in evals:
        return None
    top1 = _numbers(evals[evals["kind"].isin(kinds)], "top1")
    return float(top1.max()) if len(top1) else None


def planned_epochs(cfg: dict, status: dict | None = None) -> Any:
    """The epochs the run trains: what the trainer's `budget_minutes` fixed (status.json
    `budget_epochs`, a positive int) or else the config's `epochs` (with a budget: the maximum)."""
    fixed = (status or {}).get("budget_epochs")
    if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed > 0:
        return fixed
    return cfg.get("epochs")


def summarize(cfg: dict, metrics: pd.DataFrame, evals: pd.DataFrame, status: dict | None = None) -> dict[str, Any]:
    """model, dataset, epochs_done, epochs_planned, step, last_loss, best_linprobe, best_knn,
    images_per_s (None where unknown). `best_*` are in the evals' own unit (runstore stores what
    evals logged: fractions). `status`: status.json's document, for the epochs a budget fixed."""
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    data_cfg = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    epoch, loss, ips, step = (_numbers(metrics, c) for c in ("epoch", "loss", "images_per_s", "step"))
    return {
        "model": model_cfg.get("name") or cfg.get("model_name"),
        "dataset": data_cfg.get("name") or data_cfg.get("dataset") or dataset_name(data_cfg.get("train_path")),
        # `epoch` is epochs elapsed (the trainer logs epoch + it / steps_per_epoch): 2.0 = two done
        "epochs_done": int(math.floor(epoch.max() + 1e-6)) if len(epoch) else None,
        "epochs_planned": planned_epochs(cfg, status),
        "step": int(step.iloc[-1]) if len(step) else None,
        "last_loss": finite_or_none(loss.iloc[-1]) if len(loss) else None,
        "best_linprobe": _best(evals, ("linprobe", "linprobe_full")),
        "best_knn": _best(evals, ("knn",)),
        "images_per_s": finite_or_none(ips.tail(50).median()) if len(ips) else None,
    }
