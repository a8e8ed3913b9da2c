"""The one place that decides what a source folder holds and what each image decodes to.

Every consumer uses it: ``pipeline.build_ffcv`` and the ``torch`` and ``dali`` loaders (through
:func:`pipeline.loaders.files.list_images`), so the class list, the files of each class and the
pixels of each file are the same whatever the back end (issue 12).

* :func:`open_rgb` / :func:`load_rgb` turn *any* file PIL can read into a plain 8-bit RGB image,
  or raise :class:`BadImageError` with a short human reason. Every odd case seen in real
  image folders is handled here, once (alpha, 16-bit, palette, grayscale, CMYK, EXIF rotation,
  truncation, bombs).
* :func:`decode_hazard` says, from the header only, when another decoder (DALI, nvJPEG,
  ``torchvision.io``) could read a file differently from :func:`open_rgb`; :func:`decoded_copy`
  makes an 8-bit RGB PNG of such a file (through :func:`open_rgb`) that every decoder reads alike.
* :func:`scan_source` finds the splits and class folders of an ImageNet-style tree, a single
  split folder, ILSVRC's flat validation folder with its ``LOC_val_solution.csv`` or Kaggle's
  ``ILSVRC/Data/CLS-LOC`` layout, and lists every file it will try (nothing is dropped silently:
  hidden or stray files are listed as ``skipped`` entries with a reason). :func:`scan_split` is
  the loaders' view of one split folder.

Rules (the same for everyone):

* class folders: every sub-folder of a split, except hidden (``.*``) and system folders
  (:data:`SYSTEM_FOLDERS`: ``__MACOSX``, ``@eaDir``, ``$RECYCLE.BIN``, ...). A class folder with no
  image is kept in the class list (so indices do not depend on which files survived) and reported;
  the class list of a split folder is the union over its sibling split folders (``train``/``val``),
  so a class missing from ``val`` cannot shift ``val``'s labels away from ``train``'s.
* image files: :data:`IMAGE_EXTENSIONS` in any letter case, anywhere below a class folder; hidden
  files (``.*``, including macOS ``._*`` resource forks and ``.DS_Store``) and system files
  (``Thumbs.db``, ``desktop.ini``) are skipped with a reason.
* symbolic links (to files and folders) are followed, because subsets are often made of links;
  a folder reached twice (a link loop) is read once, and a broken link is reported.

Class index = position of the class folder name in the sorted list of class names (the
project-wide contract in docs/INTERFACES.md).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.files import write_atomic, write_atomic_with
from common.locks import file_lock

# Never let PIL pad a truncated file with grey: a truncated file must be reported.
ImageFile.LOAD_TRUNCATED_IMAGES = False

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
VAL_SOLUTION_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's own bomb limit (~89.5 MP)
DEFAULT_MIN_SIZE = 8
ALPHA_BACKGROUND = (255, 255, 255)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")
# Folders that operating systems, NAS boxes and archivers add next to real data.
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information",
                            "lost+found", "#recycle", "@Recycle", "#snapshot", "@tmp", "__pycache__"})
SYSTEM_FILES = frozenset({"Thumbs.db", "ehthumbs.db", "desktop.ini", "Icon\r"})
# How far above a flat validation folder LOC_val_solution.csv may sit: Kaggle's layout puts it
# next to ILSVRC/, i.e. four levels above ILSVRC/Data/CLS-LOC/val.
CSV_SEARCH_LEVELS = 4
KAGGLE_SUBDIR = Path("ILSVRC") / "Data" / "CLS-LOC"


class BadImageError(ValueError):
    """A file that cannot become a usable RGB image; ``reason`` is short and human."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class SourceError(ValueError):
    """The source as a whole is unusable (missing, empty, no labels); the message names the path."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The source path does not exist (both a :class:`SourceError` and a ``FileNotFoundError``)."""


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
# Files other decoders would read differently
# --------------------------------------------------------------------------------------------

# (format, mode) pairs that DALI (CPU and nvJPEG), torchvision.io and PIL decode to the same RGB
# pixels (up to IDCT rounding). Anything else -- CMYK/YCCK JPEG, 16-bit, palette, alpha or a
# transparent colour, GIF, EXIF rotation -- is a hazard: DALI drops alpha instead of compositing
# it on white (measured: 87 levels of mean difference on a half-transparent PNG) and cannot read
# GIF at all, and nvJPEG's CMYK and orientation handling is not PIL's.
_PLAIN = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("BMP", "RGB"),
          ("WEBP", "RGB"), ("TIFF", "RGB"), ("TIFF", "L"), ("PPM", "RGB"), ("PPM", "L")}


def decode_hazard(path) -> str | None:
    """Why a decoder other than :func:`open_rgb` could decode ``path`` differently, or ``None``.

    Reads the header only (PIL's lazy ``open``: about 0.2 ms a file). ``path`` may also be a binary
    file object. A file PIL cannot identify is a hazard too ("unreadable ..."): converting it
    through :func:`decoded_copy` then raises :class:`BadImageError` naming it.
    """
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            transparent = "transparency" in img.info
            orientation = _orientation(img)
    # PIL reports a bad header as any of these (SyntaxError for some plugins, a bomb as its own error)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        return f"unreadable header ({type(e).__name__})"
    if (fmt, mode) not in _PLAIN:
        return f"{fmt} {mode} image"
    if transparent:
        return f"{fmt} with a transparent colour"
    if orientation not in (None, 1):
        return f"EXIF orientation {orientation}"
    return None


def decode_hazards(paths, workers: int | None = None) -> dict:
    """:func:`decode_hazard` of many files -> ``{path: reason}`` for the hazardous ones only.

    Header reads are Python-bound, so big lists use a process pool (ImageNet's 1.28 M files take
    about 4 CPU-minutes serially)."""
    paths = [str(p) for p in paths]
    workers = workers or min(16, os.cpu_count() or 1)
    if workers > 1 and len(paths) > 4000:
        with get_context("fork").Pool(workers) as pool:
            reasons = pool.map(decode_hazard, paths, chunksize=512)
    else:
        reasons = [decode_hazard(p) for p in paths]
    return {p: r for p, r in zip(paths, reasons) if r}


def cached_decode_hazards(paths, cache_dir=None) -> dict:
    """:func:`decode_hazards`, remembered in the decode cache under a digest of the files' paths,
    sizes and mtimes. Why: every DDP rank and every restart of a run would otherwise re-read
    1.28 M headers; the first process computes the answer while the others wait on a lock, then
    read it. An unwritable cache only costs the recomputation."""
    paths = [str(p) for p in paths]
    cache = Path(cache_dir) if cache_dir else decode_cache_dir()
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        try:
            st = os.stat(p)
            sig = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"{os.path.abspath(p)}\0{sig}\n".encode())
    entry = cache / f"hazards-{h.hexdigest()}.json"
    try:
        with file_lock(cache / ".hazards.lock"):
            if entry.is_file():
                try:
                    return json.loads(entry.read_text())
                except ValueError:
                    pass   # a damaged entry is recomputed and replaced
            result = decode_hazards(paths)
            write_atomic(entry, json.dumps(result))
            return result
    except OSError:  # an unwritable or full cache folder: answer without remembering
        return decode_hazards(paths)


def decode_cache_dir() -> Path:
    """Where :func:`decoded_copy` keeps its PNGs: ``$MAEPIPE_DECODE_CACHE`` or
    ``~/.cache/maepipe/decoded``."""
    env = os.environ.get("MAEPIPE_DECODE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "maepipe" / "decoded"


def decoded_copy(path, cache_dir=None) -> str:
    """An 8-bit RGB PNG of ``open_rgb(path)``, made once and kept in ``cache_dir``; its path.

    Why: a back end with its own decoder (DALI) then reads exactly the pixels the betons and the
    torch loader get. The name is a digest of the file's real path, size and mtime, so an edited
    file gets a new copy; PNG is lossless, and plain RGB PNGs are decoded alike everywhere.
    """
    cache = Path(cache_dir) if cache_dir else decode_cache_dir()
    st = os.stat(path)
    key = hashlib.blake2b(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode(),
                          digest_size=16).hexdigest()
    out = cache / key[:2] / f"{key}.png"
    if not out.is_file():
        img = open_rgb(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a concurrent rank never reads half a PNG
        write_atomic_with(out, lambda f: img.save(f, "PNG", compress_level=1))
    return str(out)


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
    folders: list = field(default_factory=list)  # class folders found (kind "folders")
    labels_file: Path | None = None              # the CSV of a flat validation folder


@dataclass
class Source:
    root: Path
    splits: dict                                 # name -> SplitSource
    classes: list                                # sorted class folder names (wnids)
    class_names: dict                            # folder -> human name ("" if unknown)
    warnings: list = field(default_factory=list)

    def labels(self, split: str) -> list:
        """Class indices of ``splits[split].files``, in file order."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[c] for _, c in self.splits[split].files]


def folder_skip_reason(name: str) -> str | None:
    """Why a folder named ``name`` is not a class (or part of one), or ``None``."""
    if name.startswith("."):
        return "hidden folder ignored"
    if name in SYSTEM_FOLDERS:
        return f"system folder ignored ({name})"
    return None


def file_skip_reason(name: str) -> str | None:
    """Why a file named ``name`` is not an image candidate, or ``None``."""
    if name.startswith("._"):
        return "macOS resource fork (._*) ignored"
    if name.startswith("."):
        return "hidden file ignored"
    if name in SYSTEM_FILES:
        return f"system file ignored ({name})"
    ext = os.path.splitext(name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image file (extension {ext or 'none'!r})"
    return None


def _class_folders(root) -> list:
    """Sorted class folder entries of a split folder (symlinked folders included)."""
    return sorted((e for e in os.scandir(root) if e.is_dir() and not folder_skip_reason(e.name)),
                  key=lambda e: e.name)


def _scan_class_folders(split: SplitSource) -> None:
    """Fill ``split`` from ``root/<class>/**`` (recursively, like torchvision's ImageFolder)."""
    for entry in sorted(os.scandir(split.root), key=lambda e: e.name):
        if entry.is_dir():
            why = folder_skip_reason(entry.name)
            if why:
                split.skipped.append((entry.path, why))
                continue
            split.folders.append(entry.name)
            n_before = len(split.files)
            _walk_class(entry.path, entry.name, split)
            if len(split.files) == n_before:
                split.empty_classes.append(entry.name)
        elif entry.name != VAL_SOLUTION_CSV:
            split.skipped.append((entry.path, file_skip_reason(entry.name) or "not inside a class folder"))


def _walk_class(top: str, cls: str, split: SplitSource) -> None:
    """Every image candidate below ``top``, depth first in name order (``os.walk``'s top-down
    order). ``os.scandir`` entries carry the file type, so only symbolic links cost a ``stat``:
    this matters at ImageNet scale, where every loader (and every DDP rank) scans at start."""
    seen = set()   # real paths of folders read: a link loop is read once, never forever
    stack = [top]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            split.skipped.append((folder, "folder reached twice through a symbolic link (loop): read once"))
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            split.skipped.append((folder, f"unreadable folder ({e.strerror or e})"))
            continue
        subdirs = []
        for e in entries:
            if e.is_dir():
                why = folder_skip_reason(e.name)
                if why:
                    split.skipped.append((e.path, why))
                else:
                    subdirs.append(e.path)
                continue
            why = file_skip_reason(e.name)
            if why is None and e.is_symlink() and not os.path.exists(e.path):
                why = "unreadable: broken symbolic link"
            if why:
                split.skipped.append((e.path, why))
            else:
                split.files.append((e.path, cls))
        stack.extend(reversed(subdirs))


def read_val_solution(csv_path) -> dict:
    """``LOC_val_solution.csv`` -> {image id: wnid} (first box's synset, as in ILSVRC's labels)."""
    labels = {}
    try:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                pred = (row.get("PredictionString") or "").split()
                if row.get("ImageId") and pred:
                    labels[row["ImageId"]] = pred[0]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{csv_path}: cannot read validation labels ({e})") from None
    if not labels:
        raise SourceError(f"{csv_path}: no labels found (expected columns ImageId,PredictionString)")
    return labels


def _scan_flat_val(split: SplitSource, csv_path: Path) -> None:
    labels = read_val_solution(csv_path)
    split.labels_file = Path(csv_path)
    for entry in sorted(os.scandir(split.root), key=lambda e: e.name):
        if entry.is_dir():
            split.skipped.append((entry.path, folder_skip_reason(entry.name)
                                  or "folder inside a flat validation folder"))
            continue
        if entry.name == VAL_SOLUTION_CSV:
            continue
        why = file_skip_reason(entry.name)
        if why is None and entry.is_symlink() and not os.path.exists(entry.path):
            why = "unreadable: broken symbolic link"
        wnid = labels.get(Path(entry.name).stem)
        if why:
            split.skipped.append((entry.path, why))
        elif wnid is None:
            split.skipped.append((entry.path, f"no label in {csv_path}"))
        else:
            split.files.append((entry.path, wnid))


def read_class_names(path) -> dict:
    """Human class names from a file: ``classes.tsv`` (``index<TAB>folder<TAB>name``, with or
    without header), ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``), a JSON list of
    ``{"folder", "name"}`` or ``folder<TAB>name`` lines. Returns {folder: name}."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
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


def _find_up(name: str, start: Path, levels: int = CSV_SEARCH_LEVELS):
    """``start/name`` or the first ``name`` in the ``levels`` folders above ``start``."""
    start = Path(start).absolute()
    return _find_file(name, start, *list(start.parents)[:levels])


def _has_subdirs(p: Path) -> bool:
    return any(e.is_dir() and not folder_skip_reason(e.name) for e in os.scandir(p))


def _split_dirs(root: Path) -> list:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_NAMES]


def _unlabelled(d: Path, levels=CSV_SEARCH_LEVELS) -> str:
    return (f"split folder {d} has no class folders and no {VAL_SOLUTION_CSV} was found in it or "
            f"the {levels} folders above it: give the labels with --val-labels FILE "
            f"(val_labels= in Python), or leave the split out with --splits")


def _scan_split_dir(name: str, d: Path, val_labels, warn: list, strict: bool = True):
    """One split folder -> :class:`SplitSource`; ``None`` for an unlabelled split not required."""
    if _has_subdirs(d):
        s = SplitSource(name, d, "folders")
        _scan_class_folders(s)
        return s
    csv_path = val_labels or _find_up(VAL_SOLUTION_CSV, d)
    s = None
    if csv_path is not None:
        s = SplitSource(name, d, "ilsvrc_flat_val")
        _scan_flat_val(s, Path(csv_path))
        if s.files or not any(r.startswith("no label") for _, r in s.skipped):
            return s
    problem = (_unlabelled(d) if s is None else
               f"split folder {d}: none of its images is labelled in {csv_path}: give the right "
               f"labels with --val-labels FILE (val_labels= in Python), or leave the split out "
               f"with --splits")
    if strict:
        raise SourceError(problem)
    warn.append(f"split {name!r} ({d}) is unlabelled: skipped (ILSVRC's test labels are not "
                f"public; --val-labels FILE and --splits {name} to convert it)")
    return None


def _sibling_classes(split_dir: Path, val_labels=None) -> set:
    """Class names of the split folders next to ``split_dir`` (for the union rule)."""
    if split_dir.name.lower() not in SPLIT_NAMES:
        return set()
    out = set()
    for d in _split_dirs(split_dir.parent):
        if d.resolve() == split_dir.resolve():
            continue
        if _has_subdirs(d):
            out.update(e.name for e in _class_folders(d))
        elif d.name.lower() != "test":
            csv_path = val_labels if val_labels else _find_up(VAL_SOLUTION_CSV, d)
            if csv_path is not None:   # the labels of the files there, not every CSV row:
                flat = SplitSource(d.name, d, "ilsvrc_flat_val")   # a subset stays a subset
                _scan_flat_val(flat, Path(csv_path))
                out.update(lbl for _, lbl in flat.files)
    return out


def scan_source(src, *, splits=None, val_labels=None, class_names=None) -> Source:
    """Find the splits, classes and candidate files of ``src``.

    Layouts, tried in this order:

    0. Kaggle's ImageNet download: ``src/ILSVRC/Data/CLS-LOC/{train,val,test}`` is used as the tree.
    1. ImageNet tree: ``src/<split>/<class>/*`` for split names train/val/valid/validation/test;
       a split folder without class sub-folders is read as ILSVRC's flat validation folder with
       the ``LOC_val_solution.csv`` given as ``val_labels`` or found in it or up to
       :data:`CSV_SEARCH_LEVELS` folders above (Kaggle keeps it three above ``CLS-LOC``).
    2. A single split: ``src/<class>/*``; the split is named after ``src`` when that is a split
       name, else ``train``.
    3. A flat ILSVRC validation folder with a ``LOC_val_solution.csv`` (split ``val``).

    ``splits`` keeps only the named splits. A split that cannot be labelled is a
    :class:`SourceError` naming ``--val-labels`` -- except an unrequested ``test`` split, which is
    skipped with a warning (ILSVRC's test labels are not public). Classes: the union of the
    class folders (and CSV labels) of all splits, and of the sibling split folders when ``src`` is
    itself one split of a tree. Human names come from ``class_names`` (file) or, when found,
    ``classes.tsv`` / ``LOC_synset_mapping.txt`` next to the data. Raises :class:`SourceError`
    (naming the path) for a missing or empty source.
    """
    root = Path(src)
    val_labels = _check_source_args(root, val_labels)
    warn: list = []
    data_root = root
    if (root / KAGGLE_SUBDIR).is_dir() and not _split_dirs(root):
        data_root = root / KAGGLE_SUBDIR
        warn.append(f"Kaggle ImageNet layout: reading {data_root}")
    found, extra = _find_splits(root, data_root, splits, val_labels, warn)
    if splits:
        missing = [x for x in splits if x not in found]
        if missing:
            raise SourceError(f"{root}: split(s) {missing} not found (found: {sorted(found)})")
        found = {k: v for k, v in found.items() if k in splits}
    if not found or not any(s.files for s in found.values()):
        raise SourceError(f"no images found in {root}: expected <split>/<class>/<image>, "
                          f"<class>/<image>, or a flat folder with {VAL_SOLUTION_CSV}")
    classes = _class_list(root, found, extra, warn)
    names = _class_names(class_names, data_root)
    return Source(root, found, classes, {c: names.get(c, "") for c in classes}, warn)


def _check_source_args(root: Path, val_labels) -> Path | None:
    """The source must be a folder, a given label file a file; returns ``val_labels`` as a Path."""
    if not root.exists():
        raise SourceNotFoundError(f"source not found: {root}")
    if not root.is_dir():
        raise SourceError(f"source is not a folder: {root}")
    val_labels = Path(val_labels) if val_labels else None
    if val_labels is not None and not val_labels.is_file():
        raise SourceError(f"validation label file not found: {val_labels} (--val-labels)")
    return val_labels


def _find_splits(root: Path, data_root: Path, splits, val_labels, warn: list) -> tuple[dict, set]:
    """The layouts of :func:`scan_source`, in its order -> ({split name: SplitSource}, the class
    names of sibling split folders when ``root`` is one split of a tree)."""
    found: dict = {}
    split_dirs = _split_dirs(data_root)
    if split_dirs:
        if splits:
            split_dirs = [d for d in split_dirs if d.name in splits]
        for d in split_dirs:
            strict = bool(splits) or d.name.lower() != "test"
            s = _scan_split_dir(d.name, d, val_labels, warn, strict=strict)
            if s is not None:
                found[d.name] = s
        return found, set()
    if _has_subdirs(root):
        name = root.name if root.name.lower() in SPLIT_NAMES else "train"
        found[name] = _scan_split_dir(name, root, val_labels, warn)
        return found, _sibling_classes(root, val_labels)
    csv_path = val_labels or _find_up(VAL_SOLUTION_CSV, root)
    if csv_path is not None:
        name = root.name if root.name.lower() in SPLIT_NAMES else "val"
        s = SplitSource(name, root, "ilsvrc_flat_val")
        _scan_flat_val(s, Path(csv_path))
        found[name] = s
        return found, _sibling_classes(root, val_labels)
    if any(file_skip_reason(e.name) is None for e in os.scandir(root) if not e.is_dir()):
        raise SourceError(_unlabelled(root))   # images but no classes: say how to label them
    return found, set()


def _class_list(root: Path, found: dict, extra: set, warn: list) -> list:
    """The union of the splits' classes (and of ``extra``, the siblings'), sorted; warns about
    classes only the siblings have and about splits that lack some classes."""
    own = set()
    for s in found.values():
        own.update(s.folders if s.kind == "folders" else (lbl for _, lbl in s.files))
    if extra - own:
        warn.append(f"{len(extra - own)} class(es) found only in the split folders next to {root} "
                    f"are kept in the class list, so labels match theirs")
    classes = sorted(own | extra)
    folder_sets = {k: {lbl for _, lbl in s.files} | set(s.empty_classes) for k, s in found.items()}
    for k, fs in folder_sets.items():
        if fs != set(classes) and found[k].kind == "folders":
            warn.append(f"split {k!r} has {len(fs)} of the {len(classes)} classes")
    return classes


def _class_names(class_names, data_root: Path) -> dict:
    """{folder: human name} from the given names file or one found next to the data ({} if none)."""
    names_file = Path(class_names) if class_names else (
        _find_file("classes.tsv", data_root, data_root.parent)
        or _find_up(SYNSET_MAPPING, data_root, CSV_SEARCH_LEVELS - 1))
    if names_file is None:
        return {}
    if not names_file.is_file():
        raise SourceError(f"class-names file not found: {names_file}")
    try:
        return read_class_names(names_file)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"{names_file}: unreadable class names ({type(e).__name__}: {e}); "
                          f"expected classes.tsv (index, folder, name), LOC_synset_mapping.txt "
                          f"('wnid name' lines) or a JSON list of {{folder, name}}") from None


def scan_split(path, *, val_labels=None) -> Source:
    """The loaders' scan of one split folder (class sub-folders, or a flat ILSVRC validation
    folder): a :class:`Source` with exactly one split. A dataset root (``train/`` and ``val/``
    inside) is refused: a loader reads one split."""
    root = Path(path)
    if root.is_dir() and (root / KAGGLE_SUBDIR).is_dir():
        root = root / KAGGLE_SUBDIR
    if root.is_dir():
        inner = [d.name for d in _split_dirs(root) if _has_subdirs(d)]
        if inner:
            raise SourceError(f"{root}: looks like a dataset root (holds {inner}); a loader reads "
                              f"one split: pass e.g. {root / inner[0]}")
    source = scan_source(root, val_labels=val_labels)
    if len(source.splits) != 1:
        raise SourceError(f"{root}: found splits {sorted(source.splits)}; pass one of them")
    return source
