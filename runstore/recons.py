"""Sampled reconstructions in `recons.zarr`: per (split, epoch) a record of whole-image arrays.

Layout: `recons.zarr/<split>/e<epoch>-<id>/{image_ids, original, masked, reconstruction, pasted,
mask, loss}` plus the root attribute `runstore_recons = {"format": 1, "records": {split: {epoch: node}}}`.
A record is written completely under a fresh node name and only then listed in the index, so a
kill mid-write leaves an unlisted orphan (removed by the next write) and re-logging an epoch (after a
resume) swaps the index entry atomically before the old node is deleted.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from common.locks import file_lock
from common.serialize import plain

from .table import DAMAGED, check_column_name, lock_path

ATTR = "runstore_recons"
FORMAT = 1
IMAGE_KEYS = ("original", "masked", "reconstruction", "pasted")


def to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy, lists, or torch tensors (any device) -> numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:  # what numpy raises for objects it cannot make an array of
        raise TypeError(f"log_reconstructions: {name} is not array-like ({type(x).__name__})") from exc


def validate(image_ids, original, masked, reconstruction, pasted, mask, loss) -> dict[str, np.ndarray]:
    """Check shapes and dtypes; return the arrays to store. Images must already be uint8: scaling
    float images is the caller's choice (see model.visualize.reconstruction_panels)."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in zip(IMAGE_KEYS, (original, masked, reconstruction, pasted)):
        a = to_numpy(value, key)
        if a.dtype != np.uint8:
            raise TypeError(f"log_reconstructions: {key} must be uint8 N x H x W x 3, got dtype {a.dtype}")
        if a.ndim != 4 or a.shape[-1] not in (1, 3):
            raise ValueError(f"log_reconstructions: {key} must be N x H x W x 3, got shape {a.shape}")
        arrays[key] = a
    shape = arrays["original"].shape
    for key in IMAGE_KEYS:
        if arrays[key].shape != shape:
            raise ValueError(f"log_reconstructions: {key} has shape {arrays[key].shape}, original has {shape}")
    n = shape[0]
    m = to_numpy(mask, "mask")
    if m.ndim != 2 or m.shape[0] != n:
        raise ValueError(f"log_reconstructions: mask must be N x L with N={n}, got shape {m.shape}")
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("log_reconstructions: mask must hold 0/1 (1 = masked)")
    arrays["mask"] = m.astype(np.uint8)
    lo = to_numpy(loss, "loss").astype(np.float32).reshape(-1)
    if lo.shape != (n,):
        raise ValueError(f"log_reconstructions: loss must hold one value per image ({n}), got shape {lo.shape}")
    arrays["loss"] = lo
    ids = to_numpy(image_ids, "image_ids").reshape(-1)
    if ids.shape != (n,):
        raise ValueError(f"log_reconstructions: image_ids must hold {n} ids, got shape {ids.shape}")
    if ids.dtype.kind in "iu":
        arrays["image_ids"] = ids.astype(np.int64)
    else:
        arrays["image_ids"] = np.array([str(i) for i in ids], dtype=object)
    return arrays


def _index(group) -> dict:
    meta = group.attrs.get(ATTR)
    if meta is None:
        return {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"unknown reconstruction store format {meta!r}")
    return meta["records"]


def ensure(path: Path) -> None:
    """Create an empty store (so readers find it) if there is none."""
    with file_lock(lock_path(path)):
        group = zarr.open_group(str(path), mode="a", zarr_format=3)
        if group.attrs.get(ATTR) is None:
            group.attrs[ATTR] = {"format": FORMAT, "records": {}}


def write(path: Path, epoch: int, split: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    check_column_name(split, f"{path}: split")
    epoch = int(epoch)
    with file_lock(lock_path(path)):
        group = zarr.open_group(str(path), mode="a", zarr_format=3)
        records = _index(group)
        split_group = group.require_group(split)
        node = f"e{epoch:06d}-{uuid.uuid4().hex[:8]}"
        rec = split_group.create_group(node, attributes=plain({"epoch": epoch, "split": split, **attrs},
                                                              "log_reconstructions attrs"))
        for key, a in arrays.items():
            if key == "image_ids" and a.dtype == object:
                rec.create_array(key, shape=a.shape, dtype=str, fill_value="")[...] = a
            else:
                # one chunk per image: the inspector can page through large sets cheaply
                chunks = (1,) + a.shape[1:] if a.ndim > 1 else a.shape or (1,)
                rec.create_array(key, shape=a.shape, dtype=a.dtype, chunks=tuple(max(1, c) for c in chunks),
                                 fill_value=0)[...] = a
        by_split = dict(records.get(split, {}))
        by_split[str(epoch)] = node
        records = {**records, split: by_split}
        group.attrs[ATTR] = {"format": FORMAT, "records": records}  # the commit
        live = set(by_split.values())
        for name in list(split_group.group_keys()):  # replaced records and orphans of killed writes
            if name not in live:
                del split_group[name]
        for p in Path(path).rglob("*.partial"):
            p.unlink(missing_ok=True)


def splits(path: Path) -> list[str]:
    try:
        group = zarr.open_group(str(path), mode="r")
    except FileNotFoundError:
        return []
    return sorted(_index(group))


def epochs(path: Path, split: str) -> list[int]:
    try:
        group = zarr.open_group(str(path), mode="r")
    except FileNotFoundError:
        return []
    return sorted(int(e) for e in _index(group).get(split, {}))


def _read_array(rec, key: str, where: Path) -> np.ndarray:
    """One array of a record; a corrupt chunk is a ValueError naming the array's folder (zarr's own
    message, e.g. "Zstd decompression error", names no file)."""
    try:
        return rec[key][...]
    except (KeyError, FileNotFoundError):  # swapped by a writer: the caller retries
        raise
    except DAMAGED as exc:  # a codec's error (zstd, blosc, crc32c) or bad metadata: a damaged chunk
        text = " ".join(str(exc).split())[:200]
        raise ValueError(f"{where / key}: unreadable ({type(exc).__name__}: {text})") from None


def read(path: Path, epoch: int, split: str) -> dict[str, Any]:
    """All arrays of one record, plus `epoch`, `split` and `attrs`."""
    for attempt in range(3):  # the record may be swapped by a writer between index and read
        try:
            group = zarr.open_group(str(path), mode="r")
        except FileNotFoundError:
            raise KeyError(f"{path}: no reconstructions stored yet") from None
        node = _index(group).get(split, {}).get(str(int(epoch)))
        if node is None:
            have = sorted(int(e) for e in _index(group).get(split, {}))
            raise KeyError(f"{path}: no reconstructions for split {split!r} at epoch {epoch} "
                           f"(stored epochs: {have})")
        try:
            rec = group[f"{split}/{node}"]
            out: dict[str, Any] = {k: _read_array(rec, k, path / split / node) for k in
                                   (*IMAGE_KEYS, "mask", "loss", "image_ids")}
        except (KeyError, FileNotFoundError):
            if attempt == 2:
                raise
            continue
        if out["image_ids"].dtype.kind not in "iu":
            out["image_ids"] = np.asarray(out["image_ids"], dtype=object)
        attrs = dict(rec.attrs)
        out.update(epoch=int(epoch), split=split, attrs=attrs)
        return out
    raise AssertionError("unreachable")
