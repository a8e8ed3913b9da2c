"""Finding and checking the images of a source dataset.

Two jobs, both used before any image reaches a loader or FFCV's writer:

* :func:`open_rgb` / :func:`load_rgb` turn *any* file PIL can read into a plain 8-bit RGB image,
  or raise :class:`BadImageError` with a short human reason. Every odd case seen in real
  image folders is handled here, once, so the converter and the loaders agree on what a file
  decodes to (alpha, 16-bit, palette, grayscale, CMYK, EXIF rotation, truncation, bombs).
* :func:`scan_source` finds the splits and class folders of an ImageNet-style tree, a single
  split folder, or ILSVRC's flat validation folder with its ``LOC_val_solution.csv``, and lists
  every file it will try (nothing is dropped silently: hidden or stray files are listed as
  ``skipped`` entries with a reason).

Class index = position of the class folder name in the sorted list of class names (the
project-wide contract in docs/INTERFACES.md).
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Never let PIL pad a truncated file with grey: a truncated file must be reported.
ImageFile.LOAD_TRUNCATED_IMAGES = False

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
VAL_SOLUTION_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's own bomb limit (~89.5 MP)
DEFAULT_MIN_SIZE = 8
ALPHA_BACKGROUND = (255, 255, 255)


class BadImageError(ValueError):
    """A file that cannot become a usable RGB image; ``reason`` is short and human."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class SourceError(ValueError):
    """The source as a whole is unusable (missing, empty, no labels); the message names the path."""


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images to 8 bits (PIL's ``convert`` would clip at 255)."""
    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        hi = 1.0 if np.nanmax(a) <= 1.0 else 255.0
        a = np.clip(np.nan_to_num(a) / hi * 255.0, 0, 255)
    else:  # I;16*, I: treat as 16-bit data, the only integer depth image formats really use
        a = np.clip(a.astype(np.float64), 0, 65535)
        a = a / 257.0 if a.max() > 255 else a
    return Image.fromarray(np.rint(a).astype(np.uint8), "L")


def open_rgb(path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_size: int = 1,
             background=ALPHA_BACKGROUND, notes: list | None = None) -> Image.Image:
    """Open ``path`` as a fully decoded 8-bit RGB PIL image, or raise :class:`BadImageError`.

    Why one function: the FFCV converter validates with it and then decodes with it again in
    FFCV's writer processes, and the PyTorch loader uses it too, so "what this file decodes to"
    is defined once. What it does:

    * reads the whole file (``LOAD_TRUNCATED_IMAGES`` is off: truncated data is an error);
    * refuses decompression bombs by the header's size (``max_pixels``, PIL's limit by default;
      ``None`` disables) before any pixel is decoded, and images smaller than ``min_size`` px
      on a side;
    * applies the EXIF orientation (``ImageOps.exif_transpose``) so photos stand upright;
    * composites transparent images (RGBA, LA, palette or grayscale with a transparent colour)
      onto a white ``background`` -- the look they have in a browser -- instead of dropping alpha,
      which would reveal whatever colour hides under transparent pixels (often black);
    * scales 16-bit / 32-bit / float images to 8 bits, and converts palette, grayscale, CMYK and
      YCbCr images to RGB (CMYK via PIL's conversion, without ICC colour management).

    ``notes``, when given a list, receives short strings describing each fix applied (used
    for the ``fixed`` status in the converter's report).
    """
    notes = notes if notes is not None else []
    path = str(path)
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we decide ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise BadImageError(
                        path, f"decompression bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}")
                if min(w, h) < min_size:
                    raise BadImageError(path, f"too small: {w}x{h} (min side {min_size} px)")
                img.load()
                out = _normalise(img, background, notes)
    except BadImageError as e:
        raise BadImageError(path, e.reason) from None
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (PIL cannot identify the format)") from None
    except PermissionError:
        raise BadImageError(path, "unreadable: permission denied") from None
    except FileNotFoundError:
        raise BadImageError(path, "unreadable: file not found (broken link?)") from None
    except IsADirectoryError:
        raise BadImageError(path, "not a file") from None
    except MemoryError:
        raise BadImageError(path, "out of memory while decoding") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means "this file is bad"
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise BadImageError(path, f"truncated image data ({msg})") from None
        raise BadImageError(path, f"corrupt image data ({type(e).__name__}: {msg})") from None
    return out


def _normalise(img: Image.Image, background, notes: list) -> Image.Image:
    """The orientation and colour-mode part of :func:`open_rgb` (image already loaded)."""
    orientation = _orientation(img)
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        notes.append(f"EXIF orientation {orientation} applied")
    mode = img.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in img.info)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        notes.append(f"{mode} ({'float' if mode == 'F' else '16/32-bit'}) scaled to 8-bit")
        img = _to_8bit(img)
    elif mode == "L" and not has_alpha:
        notes.append("grayscale converted to RGB")
    elif mode != "RGB" and not has_alpha:
        notes.append(f"{mode} converted to RGB")
    try:
        if has_alpha:
            notes.append(f"{mode} transparency composited on white")
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
            img = Image.alpha_composite(base, rgba).convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
    except ValueError as e:
        raise BadImageError("", f"unsupported colour mode {mode}: {e}") from None
    return img


def _orientation(img: Image.Image):
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return None


def load_rgb(path, **kwargs) -> np.ndarray:
    """:func:`open_rgb` as a contiguous ``H x W x 3`` uint8 numpy array (what FFCV's writer takes)."""
    return np.ascontiguousarray(np.asarray(open_rgb(path, **kwargs), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------

@dataclass
class SplitSource:
    """One split: labelled candidate files plus files/folders already known to be unusable."""

    name: str
    root: Path
    kind: str                                   # "folders" | "ilsvrc_flat_val"
    files: list = field(default_factory=list)   # [(path str, class folder name)]
    skipped: list = field(default_factory=list)  # [(path str, reason)]
    empty_classes: list = field(default_factory=list)


@dataclass
class Source:
    root: Path
    splits: dict                                 # name -> SplitSource
    classes: list                                # sorted class folder names (wnids)
    class_names: dict                            # folder -> human name ("" if unknown)
    warnings: list = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "__MACOSX")


def _scan_class_folders(split: SplitSource) -> None:
    """Fill ``split`` from ``root/<class>/**`` (recursively, like torchvision's ImageFolder)."""
    for entry in sorted(os.scandir(split.root), key=lambda e: e.name):
        if entry.is_dir():
            if _is_hidden(entry.name):
                split.skipped.append((entry.path, "hidden folder ignored"))
                continue
            n_before = len(split.files)
            for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
                for fn in sorted(filenames):
                    p = os.path.join(dirpath, fn)
                    if _is_hidden(fn):
                        split.skipped.append((p, "hidden file ignored"))
                    else:
                        split.files.append((p, entry.name))
            if len(split.files) == n_before:
                split.empty_classes.append(entry.name)
        else:
            split.skipped.append((entry.path, "not inside a class folder"))


def read_val_solution(csv_path) -> dict:
    """``LOC_val_solution.csv`` -> {image id: wnid} (first box's synset, as in ILSVRC's labels)."""
    labels = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            pred = (row.get("PredictionString") or "").split()
            if row.get("ImageId") and pred:
                labels[row["ImageId"]] = pred[0]
    if not labels:
        raise SourceError(f"{csv_path}: no labels found (expected columns ImageId,PredictionString)")
    return labels


def _scan_flat_val(split: SplitSource, csv_path: Path) -> None:
    labels = read_val_solution(csv_path)
    for entry in sorted(os.scandir(split.root), key=lambda e: e.name):
        if entry.is_dir() or _is_hidden(entry.name):
            split.skipped.append((entry.path, "hidden file ignored" if _is_hidden(entry.name)
                                  else "folder inside a flat validation folder"))
            continue
        if entry.name == csv_path.name and Path(entry.path) == csv_path:
            continue
        wnid = labels.get(Path(entry.name).stem)
        if wnid is None:
            split.skipped.append((entry.path, f"no label in {csv_path.name}"))
        else:
            split.files.append((entry.path, wnid))


def read_class_names(path) -> dict:
    """Human class names from a file: ``classes.tsv`` (``index<TAB>folder<TAB>name``, with or
    without header), ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``), a JSON list of
    ``{"folder", "name"}`` or ``folder<TAB>name`` lines. Returns {folder: name}."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        import json
        data = json.loads(text)
        items = data if isinstance(data, list) else data.get("classes", [])
        return {d["folder"]: d.get("name", "") for d in items}
    names = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split(None, 1)
        parts = [p.strip() for p in parts]
        if len(parts) >= 3 and parts[0].isdigit():
            names[parts[1]] = parts[2]
        elif len(parts) == 2 and not parts[0].isdigit():
            names[parts[0]] = parts[1]
    return names


def _find_file(name: str, *dirs: Path):
    for d in dirs:
        if d is not None and (d / name).is_file():
            return d / name
    return None


def _has_subdirs(p: Path) -> bool:
    return any(e.is_dir() and not _is_hidden(e.name) for e in os.scandir(p))


def scan_source(src, *, splits=None, val_labels=None, class_names=None) -> Source:
    """Find the splits, classes and candidate files of ``src``.

    Layouts, tried in this order:

    1. ImageNet tree: ``src/<split>/<class>/*`` for split names train/val/valid/validation/test;
       a split folder without class sub-folders is read as ILSVRC's flat validation folder when a
       ``LOC_val_solution.csv`` is found (``val_labels``, the split folder, ``src`` or its parent).
    2. A single split: ``src/<class>/*``; the split is named after ``src`` when that is a split
       name, else ``train``.
    3. A flat ILSVRC validation folder with a ``LOC_val_solution.csv`` (split ``val``).

    ``splits`` keeps only the named splits. Human names come from ``class_names`` (file) or, when
    found, ``classes.tsv`` / ``LOC_synset_mapping.txt`` next to the data. Raises
    :class:`SourceError` (naming the path) for a missing or empty source.
    """
    root = Path(src)
    if not root.exists():
        raise SourceError(f"source not found: {root}")
    if not root.is_dir():
        raise SourceError(f"source is not a folder: {root}")
    val_labels = Path(val_labels) if val_labels else None
    if val_labels is not None and not val_labels.is_file():
        raise SourceError(f"validation label file not found: {val_labels}")
    found: dict = {}
    warn: list = []
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_NAMES]
    if split_dirs:
        for d in split_dirs:
            if _has_subdirs(d):
                s = SplitSource(d.name, d, "folders")
                _scan_class_folders(s)
            else:
                csv_path = val_labels or _find_file(VAL_SOLUTION_CSV, d, root, root.parent)
                if csv_path is None:
                    warn.append(f"split {d.name!r} ({d}) has no class folders and no "
                                f"{VAL_SOLUTION_CSV}: skipped (unlabelled)")
                    continue
                s = SplitSource(d.name, d, "ilsvrc_flat_val")
                _scan_flat_val(s, Path(csv_path))
            found[d.name] = s
    elif _has_subdirs(root):
        name = root.name if root.name.lower() in SPLIT_NAMES else "train"
        s = SplitSource(name, root, "folders")
        _scan_class_folders(s)
        found[name] = s
    else:
        csv_path = val_labels or _find_file(VAL_SOLUTION_CSV, root, root.parent)
        if csv_path is not None:
            s = SplitSource("val", root, "ilsvrc_flat_val")
            _scan_flat_val(s, Path(csv_path))
            found["val"] = s
    if splits:
        missing = [x for x in splits if x not in found]
        if missing:
            raise SourceError(f"{root}: split(s) {missing} not found (found: {sorted(found)})")
        found = {k: v for k, v in found.items() if k in splits}
    if not found or not any(s.files for s in found.values()):
        raise SourceError(f"no images found in {root}: expected <split>/<class>/<image>, "
                          f"<class>/<image>, or a flat folder with {VAL_SOLUTION_CSV}")
    classes = set()
    for s in found.values():
        if s.kind == "folders":
            classes.update(e.name for e in os.scandir(s.root) if e.is_dir() and not _is_hidden(e.name))
        else:
            classes.update(lbl for _, lbl in s.files)
    classes = sorted(classes)
    folder_sets = {k: {lbl for _, lbl in s.files} | set(s.empty_classes) for k, s in found.items()}
    for k, fs in folder_sets.items():
        if fs != set(classes) and found[k].kind == "folders":
            warn.append(f"split {k!r} has {len(fs)} of the {len(classes)} classes")
    names_file = Path(class_names) if class_names else (
        _find_file("classes.tsv", root, root.parent) or _find_file(SYNSET_MAPPING, root, root.parent))
    names = {}
    if names_file is not None:
        if not names_file.is_file():
            raise SourceError(f"class-names file not found: {names_file}")
        names = read_class_names(names_file)
    return Source(root, found, classes, {c: names.get(c, "") for c in classes}, warn)
