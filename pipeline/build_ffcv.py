"""``python -m pipeline.build_ffcv SRC OUT``: image folders -> FFCV ``.beton`` files.

Writes, for each split found in SRC (see :func:`pipeline.sources.scan_source` for the layouts):

* ``OUT/<split>.beton`` with fields ``image`` (``RGBImageField``) and ``label`` (``IntField``);
* ``OUT/classes.json``: ``[{"index", "folder", "name", "images": {split: count}}]``, index = position
  of the folder name in the sorted list of class folders (the project-wide contract);
* ``OUT/report.csv``: one row per file and per empty class folder: ``split, path, class, status,
  reason`` with status ``converted``, ``fixed`` (converted after a repair, e.g. CMYK -> RGB; the
  reason says which) or ``skipped`` (the reason says why). Within a split, the converted and fixed
  rows are in sample order: row k of them is sample k of ``<split>.beton``.

Why two passes: FFCV's writer runs the dataset in worker processes and waits for a sample count; a
worker that raises on a bad file dies and the writer waits forever. So every file is first fully
decoded by :func:`pipeline.sources.open_rgb` in a process pool (pass 1, "check"), and FFCV then only
sees files that decoded (pass 2, "write"). Should a file still fail in pass 2 (changed on disk
meanwhile), the sample is noted, the split is rewritten without it and the report says so.

Why atomic: a conversion writes ``OUT/.<split>.beton.tmp-<pid>`` and renames it with ``os.replace``
only after :func:`pipeline.beton.check_beton` accepts it, so a killed run never leaves a ``.beton``
that looks complete; leftovers of dead runs are removed by the next run.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .beton import check_beton
from .sources import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, BadImageError, SourceError, load_rgb,
                      open_rgb, scan_source)

WRITE_MODES = ("jpg", "raw", "smart", "proportion")
DEFAULT_MAX_RESOLUTION = 256
SMALL_PAGE, LARGE_PAGE = 1 << 21, 1 << 23  # FFCV's minimum (2 MiB) and default (8 MiB) pages
LARGE_DATASET = 50_000  # samples from which FFCV's 8 MiB default page is used
_TMP_RE = re.compile(r"^\.(?P<split>.+)\.beton\.tmp-(?P<pid>\d+)$")


# --------------------------------------------------------------------------------------------
# Pass 1: check every file
# --------------------------------------------------------------------------------------------

def _check_one(path: str, max_pixels, min_size):
    """Decode ``path`` fully; return (status, reason, width, height). Runs in pool workers."""
    notes: list = []
    try:
        img = open_rgb(path, max_pixels=max_pixels, min_size=min_size, notes=notes)
    except BadImageError as e:
        return "skipped", e.reason, 0, 0
    return ("fixed" if notes else "converted"), "; ".join(notes), img.width, img.height


class _ValidatedImages:
    """The indexable dataset FFCV's writer reads: ``(H x W x 3 uint8, label)`` for checked files.

    A file that fails now (it passed the check, so it changed on disk) is replaced by a black
    image and its index appended to ``late_path``; the caller rewrites the split without it.
    """

    def __init__(self, items, max_pixels, min_size, late_path):
        self.items, self.max_pixels, self.min_size = items, max_pixels, min_size
        self.late_path = late_path

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            return load_rgb(path, max_pixels=self.max_pixels, min_size=self.min_size), label
        except Exception as e:  # noqa: BLE001 - raising here would hang FFCV's writer
            with open(self.late_path, "a") as f:
                f.write(f"{i}\t{getattr(e, 'reason', e)}\n")
            return np.zeros((max(self.min_size, 8),) * 2 + (3,), np.uint8), label


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(out: Path) -> list:
    """Remove ``.<split>.beton.tmp-<pid>`` files whose writer process is gone; return them."""
    removed = []
    if out.is_dir():
        for p in out.iterdir():
            m = _TMP_RE.match(p.name)
            if m and not _pid_alive(int(m["pid"])):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _page_size(max_bytes: int, num_samples: int) -> int:
    """FFCV page size: one sample must fit a page (a power of two). Each writer process leaves
    its last page partly empty, so small datasets get FFCV's 2 MiB minimum page instead of its
    8 MiB default (the sample set: ~3 MiB instead of ~24 MiB per split)."""
    base = LARGE_PAGE if num_samples >= LARGE_DATASET else SMALL_PAGE
    return max(base, 1 << math.ceil(math.log2(max(max_bytes, 1) + 4096)))


def _write_beton(path: Path, items, fields, *, num_workers, chunk_size, page_size,
                 max_pixels, min_size, progress, desc):
    """Run FFCV's DatasetWriter on ``items``; return the indices that failed during writing."""
    import ffcv.writer as fw
    late = path.with_name(path.name + ".late")
    late.unlink(missing_ok=True)
    data = _ValidatedImages(items, max_pixels, min_size, str(late))
    writer = fw.DatasetWriter(str(path), fields, page_size=page_size, num_workers=num_workers)
    # FFCV draws its own bare tqdm bar; give it a name, a unit (images/s) and the on/off switch.
    original = fw.tqdm
    fw.tqdm = partial(tqdm, desc=desc, unit="img", disable=not progress, mininterval=0.5)
    try:
        writer.from_indexed_dataset(data, chunksize=chunk_size)
    finally:
        fw.tqdm = original
    failed = {}
    if late.exists():
        for line in late.read_text().splitlines():
            i, _, reason = line.partition("\t")
            failed[int(i)] = reason
        late.unlink()
    return failed


def _select_subset(files, n, seed):
    """``n`` files per class, a seeded random choice kept in sorted order (deterministic)."""
    by_class: dict = {}
    for p, c in files:
        by_class.setdefault(c, []).append((p, c))
    rng = random.Random(seed)
    chosen = []
    for c in sorted(by_class):
        group = by_class[c]
        chosen += sorted(rng.sample(group, n)) if len(group) > n else group
    return chosen


# --------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------

def build(src, out, *, splits=None, max_resolution: int | None = DEFAULT_MAX_RESOLUTION,
          write_mode: str = "jpg", jpeg_quality: int = 90, compress_probability: float = 0.5,
          smart_threshold: int | None = None, num_workers: int | None = None, subset: int | None = None,
          chunk_size: int = 100, page_size: int | None = None, val_labels=None, class_names=None,
          min_size: int = DEFAULT_MIN_SIZE, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          seed: int = 0, progress: bool = True, log=print) -> dict:
    """Convert the image folders in ``src`` to FFCV files in ``out``; see the module docstring.

    Options (the CLI's, same names): ``max_resolution`` longest side kept (``None``/0: original
    size); ``write_mode`` jpg | raw | smart | proportion; ``jpeg_quality``; ``compress_probability``
    (proportion mode); ``smart_threshold`` (smart mode: raw bytes above which an image is stored as
    JPEG; default ``3 * (max_resolution/2)**2``, because FFCV's default of None stores all raw);
    ``num_workers`` processes for both passes (default: CPU count); ``subset`` files per class;
    ``chunk_size`` samples per FFCV work item; ``page_size`` FFCV page bytes (default: fits the
    largest sample); ``val_labels`` a ``LOC_val_solution.csv``; ``class_names`` a names file;
    ``min_size`` / ``max_pixels`` image size limits (smaller / bigger files are skipped).

    Returns ``{"out", "splits": {split: {"path", "num_samples", "converted", "fixed", "skipped",
    "empty_classes", "bytes", "seconds"}}, "classes", "report", "classes_json", "failed_splits"}``.
    Raises :class:`pipeline.sources.SourceError` for a missing/empty source and ``ValueError`` for
    bad options.
    """
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 0.0 <= float(compress_probability) <= 1.0:
        raise ValueError(f"compress_probability must be in [0, 1], got {compress_probability}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")
    max_resolution = int(max_resolution) if max_resolution else None
    if write_mode == "smart" and smart_threshold is None:
        side = (max_resolution or 512) // 2
        smart_threshold = 3 * side * side
    workers = int(num_workers) if num_workers else (os.cpu_count() or 1)
    t_start = time.time()

    source = scan_source(src, splits=splits, val_labels=val_labels, class_names=class_names)
    from ffcv.fields import IntField, RGBImageField  # slow import (numba, cv2): after the cheap checks
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in clean_stale_tmp(out):
        log(f"removed stale temporary file of an interrupted run: {p}")
    for w in source.warnings:
        log(f"warning: {w}")
    class_index = {c: i for i, c in enumerate(source.classes)}
    rows = []       # report rows: split, path, class, status, reason
    summary = {}
    failed_splits = []
    ctx = get_context("fork")
    check = partial(_check_one, max_pixels=max_pixels, min_size=min_size)

    for name, split in source.splits.items():
        t0 = time.time()
        files = _select_subset(split.files, subset, seed) if subset else split.files
        for p, reason in split.skipped:
            rows.append((name, p, "", "skipped", reason))
        for c in split.empty_classes:
            rows.append((name, str(split.root / c), c, "skipped",
                         "empty class folder (kept in the class index with 0 images)"))
            log(f"warning: empty class folder {split.root / c}")
        # Pass 1: decode everything once, in parallel.
        results = []
        bar = tqdm(total=len(files), desc=f"check {name}", unit="img", disable=not progress,
                   mininterval=0.5)
        if workers > 1 and len(files) > 64:
            with ctx.Pool(workers) as pool:
                for r in pool.imap(check, [p for p, _ in files], chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for p, _ in files:
                results.append(check(p))
                bar.update()
        bar.close()
        good, good_rows = [], []
        max_wh = 1
        for (p, c), (status, reason, w, h) in zip(files, results):
            if status == "skipped":
                rows.append((name, p, c, status, reason))
            else:
                good.append((p, class_index[c]))
                good_rows.append([name, p, c, status, reason])
                max_wh = max(max_wh, w * h)
        counts = Counter(r[3] for r in rows if r[0] == name)
        if not good:
            log(f"error: split {name!r}: no usable images among {len(files)} files in {split.root} "
                f"(see {out / 'report.csv'}); no .beton written")
            failed_splits.append(name)
            summary[name] = dict(path=None, num_samples=0, converted=0, fixed=0,
                                 skipped=counts["skipped"], empty_classes=list(split.empty_classes),
                                 bytes=0, seconds=time.time() - t0)
            continue
        # Pass 2: FFCV writes only checked files, into a temporary file renamed at the end.
        max_side = max_resolution or int(math.isqrt(max_wh)) + 1
        raw_bytes = 3 * min(max_wh, max_side * max_side) if max_resolution else 3 * max_wh
        fields = {
            "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                   smart_threshold=smart_threshold, jpeg_quality=int(jpeg_quality),
                                   compress_probability=float(compress_probability)),
            "label": IntField(),
        }
        final = out / f"{name}.beton"
        tmp = out / f".{name}.beton.tmp-{os.getpid()}"
        for attempt in range(3):
            failed = _write_beton(tmp, good, fields, num_workers=workers, chunk_size=chunk_size,
                                  page_size=page_size or _page_size(raw_bytes + 1024, len(good)),
                                  max_pixels=max_pixels, min_size=min_size, progress=progress,
                                  desc=f"write {name}")
            if not failed:
                break
            for i in sorted(failed):  # changed on disk since the check: drop and rewrite
                good_rows[i][3:5] = ["skipped", f"failed while writing: {failed[i]}"]
                rows.append(tuple(good_rows[i]))
            keep = [i for i in range(len(good)) if i not in failed]
            good = [good[i] for i in keep]
            good_rows = [good_rows[i] for i in keep]
            tmp.unlink(missing_ok=True)
            if not good:
                break
        else:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{final}: files kept failing while writing; see {out / 'report.csv'}")
        if not good:
            failed_splits.append(name)
            summary[name] = dict(path=None, num_samples=0, converted=0, fixed=0,
                                 skipped=len(files), empty_classes=list(split.empty_classes),
                                 bytes=0, seconds=time.time() - t0)
            continue
        info = check_beton(tmp)
        if info["num_samples"] != len(good):
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{final}: wrote {info['num_samples']} samples, expected {len(good)}")
        os.replace(tmp, final)
        rows.extend(tuple(r) for r in good_rows)
        counts = Counter(r[3] for r in rows if r[0] == name)
        summary[name] = dict(path=str(final), num_samples=len(good), converted=counts["converted"],
                             fixed=counts["fixed"], skipped=counts["skipped"],
                             empty_classes=list(split.empty_classes), bytes=info["size_bytes"],
                             seconds=time.time() - t0)

    # classes.json and report.csv, each written atomically as well.
    per_class = Counter((r[0], r[2]) for r in rows if r[3] in ("converted", "fixed"))
    classes = [dict(index=i, folder=c, name=source.class_names.get(c, ""),
                    images={s: per_class[(s, c)] for s in source.splits})
               for i, c in enumerate(source.classes)]
    _atomic_write(out / "classes.json", lambda f: json.dump(classes, f, indent=1))
    _atomic_write(out / "report.csv", lambda f: _write_report(f, rows), newline="")
    result = dict(out=str(out), splits=summary, classes=len(classes), report=str(out / "report.csv"),
                  classes_json=str(out / "classes.json"), failed_splits=failed_splits,
                  seconds=time.time() - t_start)
    _print_summary(result, rows, log)
    return result


def _write_report(f, rows):
    w = csv.writer(f)
    w.writerow(["split", "path", "class", "status", "reason"])
    w.writerows(rows)


def _atomic_write(path: Path, fill, newline=None):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline=newline, encoding="utf-8") as f:
        fill(f)
    os.replace(tmp, path)


def _print_summary(result, rows, log):
    for name, s in result["splits"].items():
        size = f", {s['bytes'] / 2**20:.1f} MiB ({s['bytes'] / max(s['num_samples'], 1) / 1024:.1f} " \
               f"KiB/img)" if s["path"] else ""
        log(f"{name}: {s['num_samples']} images written (converted {s['converted']}, fixed "
            f"{s['fixed']}), skipped {s['skipped']}, empty class folders {len(s['empty_classes'])}"
            f"{size}, {s['seconds']:.1f} s -> {s['path'] or 'nothing written'}")
        reasons = Counter(re.sub(r"\(.*", "", r[4]).strip() for r in rows
                          if r[0] == name and r[3] == "skipped")
        for reason, n in reasons.most_common(12):
            log(f"    skipped {n:6d}  {reason}")
        if len(reasons) > 12:
            log(f"    ... {len(reasons) - 12} more kinds of reason: see report.csv")
    log(f"{result['classes']} classes -> {result['classes_json']}; per-file report -> {result['report']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.build_ffcv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an image folder to FFCV .beton files (one per split).\n\n"
                    "SRC: an ImageNet-style tree (SRC/train/<class>/*, SRC/val/<class>/*), a single split "
                    "folder (SRC/<class>/*), or ILSVRC's flat validation folder with LOC_val_solution.csv.\n"
                    "OUT gets <split>.beton (fields image, label), classes.json and report.csv (one row "
                    "per file: converted, fixed or skipped, with the reason). Bad files never stop the "
                    "conversion; each is fully decoded before FFCV sees it.",
        epilog="exit codes: 0 done; 1 a split had no usable image; 2 missing/empty source or bad "
               "option.\nexample: python -m pipeline.build_ffcv ~/imagenet data/imagenet_ffcv "
               "--max-resolution 256 --num-workers 32")
    ap.add_argument("src", help="source folder")
    ap.add_argument("out", help="output folder (created if missing)")
    ap.add_argument("--splits", nargs="+", default=None, help="only these splits (default: all found)")
    ap.add_argument("--max-resolution", type=int, default=DEFAULT_MAX_RESOLUTION,
                    help=f"longest side stored, in px; 0 keeps the original size "
                         f"(default {DEFAULT_MAX_RESOLUTION}: headroom for RandomResizedCrop to 224)")
    ap.add_argument("--write-mode", choices=WRITE_MODES, default="jpg",
                    help="jpg (default: ~8x smaller than raw), raw (uint8 pixels), smart (raw when "
                         "small, jpg above --smart-threshold), proportion (jpg with probability "
                         "--compress-probability)")
    ap.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    ap.add_argument("--compress-probability", type=float, default=0.5,
                    help="proportion mode: share of images stored as JPEG (default 0.5)")
    ap.add_argument("--smart-threshold", type=int, default=None,
                    help="smart mode: raw size in bytes above which an image is stored as JPEG "
                         "(default 3*(max_resolution/2)^2)")
    ap.add_argument("--num-workers", type=int, default=None, help="processes (default: CPU count)")
    ap.add_argument("--subset", type=int, default=None, help="at most N images per class (quick runs)")
    ap.add_argument("--chunk-size", type=int, default=100, help="samples per FFCV work item (default 100)")
    ap.add_argument("--page-size", type=int, default=None,
                    help="FFCV page size in bytes, a power of two (default: fits the largest image)")
    ap.add_argument("--val-labels", default=None, help="LOC_val_solution.csv for a flat ILSVRC val folder")
    ap.add_argument("--class-names", default=None,
                    help="human class names: classes.tsv (index, folder, name) or LOC_synset_mapping.txt")
    ap.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                    help=f"skip images with a side below this (default {DEFAULT_MIN_SIZE} px)")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help=f"skip images above this many pixels: decompression bombs (default "
                         f"{DEFAULT_MAX_PIXELS}, PIL's limit)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --subset choice (default 0)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        result = build(a.src, a.out, splits=a.splits, max_resolution=a.max_resolution,
                       write_mode=a.write_mode, jpeg_quality=a.jpeg_quality,
                       compress_probability=a.compress_probability, smart_threshold=a.smart_threshold,
                       num_workers=a.num_workers, subset=a.subset, chunk_size=a.chunk_size,
                       page_size=a.page_size, val_labels=a.val_labels, class_names=a.class_names,
                       min_size=a.min_size, max_pixels=a.max_pixels, seed=a.seed,
                       progress=not a.quiet)
    except (SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if result["failed_splits"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
