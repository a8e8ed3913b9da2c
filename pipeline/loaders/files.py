"""Listing an image folder or a file list into (paths, labels, classes) for the torch and DALI back ends.

Accepted ``path``:

* a split folder with one subfolder per class (``train/<class>/*.JPEG``) or ILSVRC's flat
  validation folder with ``LOC_val_solution.csv``: scanned by :func:`pipeline.sources.scan_split`,
  the same scanner ``pipeline.build_ffcv`` uses, so the classes, the files of each class and every
  label are the ones in the ``.beton`` files (class index = position of the folder name in the
  sorted list of class names, docs/INTERFACES.md; files in scan order);
* a text file list, one ``relative/path label`` per line (DALI's ``file_list`` format), paths
  relative to the list's folder; class names come from ``classes.json`` / ``classes.tsv`` beside it
  when present, else the label numbers.

``plain_decode=True`` (the DALI back end) also finds the files whose decoding by a decoder other
than :func:`pipeline.sources.open_rgb` could differ (CMYK, 16-bit, alpha, palette, GIF, EXIF
rotation; :func:`pipeline.sources.decode_hazard`) and points ``read_paths`` at an ``open_rgb``
PNG copy of each (:func:`pipeline.sources.decoded_copy`), so every back end sees the same pixels.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..sources import (IMAGE_EXTENSIONS, SourceError, SourceNotFoundError, cached_decode_hazards,
                       decoded_copy, scan_split)

log = logging.getLogger(__name__)


@dataclass
class FileSplit:
    root: Path
    paths: list[str]      # the source files (absolute when the scan was given an absolute path)
    labels: list[int]
    classes: list[str]
    skipped: list = field(default_factory=list)     # [(path, reason)] files the scan left out
    hazards: dict = field(default_factory=dict)     # {path: reason} (plain_decode only)
    read_paths: list[str] = field(default_factory=list)  # what a non-PIL decoder should read

    def __post_init__(self):
        if not self.read_paths:
            self.read_paths = list(self.paths)


def list_images(path: str | os.PathLike, *, val_labels=None, plain_decode: bool = False) -> FileSplit:
    """Scan ``path`` (split folder, flat ILSVRC val folder or file list) into a :class:`FileSplit`.

    Raises :class:`pipeline.sources.SourceError` (a ``ValueError`` naming the path) when the path is
    missing, holds no image, is a dataset root, or is a flat validation folder without labels."""
    p = Path(path)
    if not p.exists():
        raise SourceNotFoundError(f"{p}: no such image folder or file list")
    split = _from_list(p) if p.is_file() else _from_folder(p, val_labels)
    if not split.paths:
        raise SourceError(f"{p}: no images found (expected <class>/<image> with one of "
                          f"{' '.join(IMAGE_EXTENSIONS)} or a file list of 'path label' lines)")
    if plain_decode:
        split.hazards = cached_decode_hazards(split.paths)
        if split.hazards:
            # one PNG per odd file, made once; a bad file raises BadImageError naming it here
            split.read_paths = [decoded_copy(q) if q in split.hazards else q for q in split.paths]
            kinds = sorted({r.split(" (")[0] for r in split.hazards.values()})
            log.warning("%s: %d file(s) would decode differently outside PIL (%s): read through "
                        "pipeline.sources.open_rgb copies", p, len(split.hazards), ", ".join(kinds[:5]))
    return split


def _from_folder(root: Path, val_labels=None) -> FileSplit:
    source = scan_split(root, val_labels=val_labels)
    (name, split), = source.splits.items()
    return FileSplit(root, [f for f, _ in split.files], source.labels(name), source.classes,
                     skipped=list(split.skipped))


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
