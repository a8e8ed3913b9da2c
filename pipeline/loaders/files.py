"""Listing an image folder or a file list into (paths, labels, classes) for the torch and DALI back ends.

Accepted ``path``:

* a folder with one subfolder per class (``train/<class>/*.JPEG``); class index = position of the
  folder name in the sorted list of folder names (docs/INTERFACES.md), files sorted by path;
* a text file list, one ``relative/path label`` per line (DALI's ``file_list`` format), paths
  relative to the list's folder; class names come from ``classes.json`` / ``classes.tsv`` beside it
  when present, else the label numbers.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class FileSplit:
    root: Path
    paths: list[str]      # absolute paths
    labels: list[int]
    classes: list[str]


def list_images(path: str | os.PathLike) -> FileSplit:
    """Scan ``path`` (class folder tree or file list) into a :class:`FileSplit`; clear error if empty."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such image folder or file list")
    split = _from_list(p) if p.is_file() else _from_folder(p)
    if not split.paths:
        raise ValueError(f"{p}: no images found (expected <class>/*{'|'.join(IMAGE_EXTENSIONS)} "
                         f"or a file list of 'path label' lines)")
    return split


def _from_folder(root: Path) -> FileSplit:
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        hint = ""
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(root)):
            hint = " (images found directly in it: put them in class subfolders)"
        raise ValueError(f"{root}: no class subfolders{hint}")
    if {"train", "val"} <= set(classes) and not _has_images(root / classes[0]):
        raise ValueError(f"{root}: looks like a dataset root; pass {root}/train or {root}/val")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, files in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(files):  # hidden files are skipped, as pipeline.build_ffcv does
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label)
    return FileSplit(root, paths, labels, classes)


def _has_images(d: Path) -> bool:
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(d))


def _from_list(list_file: Path) -> FileSplit:
    root = list_file.parent
    paths, labels = [], []
    with open(list_file) as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            rel, _, lab = line.rpartition(" ")
            if not rel or not lab.lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{n}: expected 'relative/path label', got {line!r}")
            paths.append(str(root / rel))
            labels.append(int(lab))
    classes = read_class_names(root) or [str(i) for i in range(max(labels, default=-1) + 1)]
    return FileSplit(root, paths, labels, classes)


def read_class_names(folder: str | os.PathLike) -> list[str] | None:
    """Class folder names from ``classes.json`` or ``classes.tsv`` in ``folder`` (or its parent).

    ``classes.json`` may be a list of names, a list of records with an index and a folder name
    (``{"index", "name"|"folder"|"wnid", ...}``), or a ``{name: index}`` / ``{index: name}`` dict.
    ``classes.tsv`` has a header and ``index <tab> name ...`` rows.
    """
    for d in (Path(folder), Path(folder).parent):
        js, tsv = d / "classes.json", d / "classes.tsv"
        if js.is_file():
            return _classes_from_json(js)
        if tsv.is_file():
            with open(tsv, newline="") as fh:
                rows = list(csv.reader(fh, delimiter="\t"))
            if rows and not rows[0][0].strip().isdigit():
                rows = rows[1:]
            rows = sorted((int(r[0]), r[1]) for r in rows if r)
            return [name for _, name in rows]
    return None


def _classes_from_json(js: Path) -> list[str]:
    data = json.loads(js.read_text())
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, list):
        if all(isinstance(x, str) for x in data):
            return list(data)
        if all(isinstance(x, dict) for x in data):
            key = next((k for k in ("folder", "name", "wnid", "class") if k in data[0]), None)
            if key is None:
                raise ValueError(f"{js}: records need a 'folder' or 'name' key, got {sorted(data[0])}")
            recs = sorted(data, key=lambda r: int(r.get("index", data.index(r))))
            return [str(r[key]) for r in recs]
    if isinstance(data, dict):
        items = list(data.items())
        if all(str(k).isdigit() for k, _ in items):
            return [str(v) for _, v in sorted(items, key=lambda kv: int(kv[0]))]
        return [k for k, _ in sorted(items, key=lambda kv: int(kv[1]))]
    raise ValueError(f"{js}: unrecognised class index format")
