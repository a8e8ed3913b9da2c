"""``python -m pipeline.build_ffcv SRC OUT``: image folders -> FFCV ``.beton`` files.

Writes, for each split found in SRC (see :func:`pipeline.sources.scan_source` for the layouts and
the rules for classes and files, shared with every loader):

* ``OUT/<split>.beton`` with fields ``image`` (``RGBImageField``) and ``label`` (``IntField``);
* ``OUT/<split>.beton.sums``: one checksum per sample (:func:`pipeline.beton.write_sums`), checked
  by ``python -m pipeline.beton --verify`` / :func:`pipeline.beton.verify_beton`;
* ``OUT/classes.json``: ``[{"index", "folder", "name", "images": {split: count}}]``, index = position
  of the folder name in the sorted list of class folders (the project-wide contract);
* ``OUT/report.csv``: one row per file and per empty class folder: ``split, path, class, status,
  reason`` with status ``converted``, ``fixed`` (converted after a repair, e.g. CMYK -> RGB; the
  reason says which) or ``skipped`` (the reason says why). Within a split, the converted and fixed
  rows are in sample order: row k of them is sample k of ``<split>.beton``;
* ``OUT/manifest.json`` (last): the build id, source, settings and each split's file, so files of
  different builds in one OUT are detected (``--verify`` names them).

Why two passes: FFCV's writer runs the dataset in worker processes and waits for a sample count; a
worker that raises on a bad file dies and the writer waits forever. So every file is first fully
decoded by :func:`pipeline.sources.open_rgb` in a process pool (pass 1, "check"), and FFCV then only
sees files that decoded (pass 2, "write"). Should a file still fail in pass 2 (changed on disk
meanwhile), the sample is noted, the split is rewritten without it and the report says so.

Why atomic, and one build at a time: a build holds ``common.locks.exclusive_lock(OUT/.lock)`` from
its first write to its last (a second build into the same OUT exits 2 naming the holder's pid),
refuses an OUT inside SRC (it would become a class of the next scan) and refuses to add splits to
an OUT whose other ``.beton`` files were built from a different class list. Every split is first
written to ``OUT/.<split>.beton.<pid>.tmp`` and checked by :func:`pipeline.beton.check_beton`; only
when all splits are done are they renamed into place (``os.replace``), followed by classes.json,
report.csv and manifest.json. A killed run never leaves a ``.beton`` that looks complete; the next
run sweeps its temporaries (``common.locks.sweep_stale_temps``, under the lock).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from common.files import write_atomic
from common.locks import LockedError, exclusive_lock, sweep_stale_temps

from .beton import check_beton, read_sums, stamp_path, sums_path, write_sums
from .sources import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, BadImageError, SourceError, load_rgb,
                      open_rgb, scan_source)

WRITE_MODES = ("jpg", "raw", "smart", "proportion")
DEFAULT_MAX_RESOLUTION = 256
SMALL_PAGE, LARGE_PAGE = 1 << 21, 1 << 23  # FFCV's minimum (2 MiB) and default (8 MiB) pages
LARGE_DATASET = 50_000  # samples from which FFCV's 8 MiB default page is used
MANIFEST_FORMAT = "maepipe-ffcv-build-1"


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

def _page_size(max_bytes: int, num_samples: int) -> int:
    """FFCV page size: one sample must fit a page (a power of two). Each writer process leaves
    its last page partly empty, so small datasets get FFCV's 2 MiB minimum page instead of its
    8 MiB default (the sample set: ~3 MiB instead of ~24 MiB per split)."""
    base = LARGE_PAGE if num_samples >= LARGE_DATASET else SMALL_PAGE
    return max(base, 1 << math.ceil(math.log2(max(max_bytes, 1) + 4096)))


def _write_beton(path: Path, items, fields, *, num_workers, chunk_size, page_size,
                 max_pixels, min_size, progress, desc):
    """Run FFCV's DatasetWriter on ``items``; return the indices that failed during writing."""
    import ffcv.writer as fw  # slow import (numba): only when a split is really written
    late = path.with_name(f"{path.name}.late.tmp")   # swept like the other temporaries
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
    "empty_classes", "bytes", "seconds"}}, "classes", "report", "classes_json", "manifest",
    "build_id", "failed_splits"}``. Raises :class:`pipeline.sources.SourceError` for a missing,
    empty or unlabelled source, :class:`OutputError` for an unusable OUT (inside SRC, holding
    another build's splits), ``common.locks.LockedError`` while another build writes OUT, and
    ``ValueError`` for bad options.
    """
    _check_options(write_mode, jpeg_quality, compress_probability, subset)
    settings = _write_settings(write_mode, max_resolution, smart_threshold, jpeg_quality, compress_probability)
    workers = int(num_workers) if num_workers else (os.cpu_count() or 1)
    t_start = time.time()
    out = Path(out)
    _check_out_outside_src(src, out)
    source = scan_source(src, splits=splits, val_labels=val_labels, class_names=class_names)
    make_fields = _field_maker(settings)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Staging(out=out, build_id=uuid.uuid4().hex[:16],
                     class_index={c: i for i, c in enumerate(source.classes)}, make_fields=make_fields,
                     subset=subset, seed=seed, log=log,
                     write_opts=dict(workers=workers, chunk_size=chunk_size, page_size=page_size,
                                     max_resolution=settings["max_resolution"], max_pixels=max_pixels,
                                     min_size=min_size, progress=progress))
    with exclusive_lock(out / ".lock", out):
        for p in sweep_stale_temps(out):
            log(f"removed stale temporary file of an interrupted run: {p}")
        kept = _splits_to_keep(out, source.classes, set(source.splits))
        for w in source.warnings:
            log(f"warning: {w}")
        summary, staged, failed_splits = {}, {}, []
        try:
            for name, split in source.splits.items():
                summary[name], pair = _stage_split(stage, name, split)
                if pair is None:
                    failed_splits.append(name)
                else:
                    staged[name] = pair
            result = _commit(out, source, staged, kept, stage.rows, summary, failed_splits, stage.build_id,
                             settings, log)
        finally:
            for pair in staged.values():   # what _commit did not move: an error stopped the build
                for p in pair:
                    p.unlink(missing_ok=True)
    result["seconds"] = time.time() - t_start
    _print_summary(result, stage.rows, log)
    return result


def _write_settings(write_mode, max_resolution, smart_threshold, jpeg_quality, compress_probability) -> dict:
    """``RGBImageField``'s keywords (also the manifest's ``settings``), defaults resolved: no
    ``max_resolution`` is None (original size); smart mode's threshold is ``3 * (side/2)**2``."""
    max_resolution = int(max_resolution) if max_resolution else None
    if write_mode == "smart" and smart_threshold is None:
        side = (max_resolution or 512) // 2
        smart_threshold = 3 * side * side
    return dict(write_mode=write_mode, max_resolution=max_resolution, smart_threshold=smart_threshold,
                jpeg_quality=int(jpeg_quality), compress_probability=float(compress_probability))


def _field_maker(settings: dict) -> Callable[[], dict]:
    """A function making one split's fields: ``image`` (RGBImageField with ``settings``) and
    ``label`` (IntField). FFCV is imported here, after the cheap checks of the source and options,
    because its import (numba, cv2) takes seconds."""
    from ffcv.fields import IntField, RGBImageField
    return lambda: {"image": RGBImageField(**settings), "label": IntField()}


@dataclass
class _Staging:
    """What the splits of one build share while each is checked and written to a temporary file."""

    out: Path
    build_id: str
    class_index: dict                    # class folder -> label
    make_fields: Callable[[], dict]
    subset: int | None
    seed: int
    log: Callable
    write_opts: dict                     # keywords of _write_split besides max_wh
    rows: list = field(default_factory=list)   # report rows: split, path, class, status, reason


def _stage_split(stage: _Staging, name: str, split) -> tuple[dict, tuple | None]:
    """Pass 1 and 2 of one split into ``OUT/.<split>.beton.<pid>.tmp`` (+ its checksums): returns
    (the split's summary, (beton temp, sums temp)), or (summary, None) when no file of the split is
    usable (logged as an error; no .beton for it)."""
    t0 = time.time()
    rows = stage.rows   # the whole build's report rows: this split's are appended
    files = _select_subset(split.files, stage.subset, stage.seed) if stage.subset else split.files
    for p, reason in split.skipped:
        rows.append((name, p, "", "skipped", reason))
    for c in split.empty_classes:
        rows.append((name, str(split.root / c), c, "skipped",
                          "empty class folder (kept in the class index with 0 images)"))
        stage.log(f"warning: empty class folder {split.root / c}")
    opts = stage.write_opts
    good, good_rows, max_wh = _check_files(name, files, stage.class_index, rows, opts["workers"],
                                           opts["max_pixels"], opts["min_size"], opts["progress"])
    tmp = None
    if good:
        tmp, good, good_rows = _write_split(stage.out, name, good, good_rows, rows, stage.make_fields(),
                                            max_wh=max_wh, **opts)
    if tmp is None:
        stage.log(f"error: split {name!r}: no usable images among {len(files)} files in "
                  f"{split.root} (see {stage.out / 'report.csv'}); no .beton written")
        return dict(path=None, num_samples=0, converted=0, fixed=0,
                    skipped=sum(r[0] == name for r in rows), empty_classes=list(split.empty_classes),
                    bytes=0, seconds=time.time() - t0), None
    sums_tmp = stage.out / f".{name}.beton.sums.{os.getpid()}.tmp"
    write_sums(tmp, sums_tmp, build_id=stage.build_id)
    rows.extend(tuple(r) for r in good_rows)
    counts = Counter(r[3] for r in rows if r[0] == name)
    return dict(path=str(stage.out / f"{name}.beton"), num_samples=len(good), converted=counts["converted"],
                fixed=counts["fixed"], skipped=counts["skipped"], empty_classes=list(split.empty_classes),
                bytes=os.path.getsize(tmp), seconds=time.time() - t0), (tmp, sums_tmp)


class OutputError(ValueError):
    """OUT cannot take this build (inside SRC, or holding splits of a different build)."""


def _check_options(write_mode, jpeg_quality, compress_probability, subset):
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 0.0 <= float(compress_probability) <= 1.0:
        raise ValueError(f"compress_probability must be in [0, 1], got {compress_probability}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")


def _check_out_outside_src(src, out: Path) -> None:
    """OUT inside SRC would become a class folder (or a split) of the next scan."""
    s, o = Path(src).resolve(), out.resolve()
    if o == s or o.is_relative_to(s):
        raise OutputError(f"output folder {out} is inside the source {src}: its files would be read "
                          f"as images of the next build; choose an OUT outside SRC")


def _splits_to_keep(out: Path, classes: list, building: set) -> dict:
    """Splits already in OUT that this build does not rewrite: kept only when built from the same
    class list, so ``classes.json`` stays true for every ``.beton`` in OUT; else OutputError."""
    others = sorted(p for p in out.glob("*.beton") if p.stem not in building)
    if not others:
        return {}
    names = ", ".join(p.name for p in others)
    try:
        old = [c["folder"] for c in json.loads((out / "classes.json").read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        old = None
    if old != classes:
        what = "no readable classes.json" if old is None else \
            f"classes.json lists {len(old)} classes, this source has {len(classes)} ({_first_diff(old, classes)})"
        raise OutputError(f"{out} holds {names} from another build with other classes ({what}); "
                          f"one OUT holds one build: use another OUT, rebuild those splits too, or "
                          f"remove them")
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits", {}), dict):
        manifest = {}   # not ours: the kept splits' entries are rebuilt from their files
    kept = {}
    for p in others:
        entry = dict(manifest.get("splits", {}).get(p.stem, {}))
        entry.setdefault("file", p.name)
        if sums_path(p).is_file():
            entry.setdefault("build_id", read_sums(sums_path(p))[2].get("build_id", ""))
        kept[p.stem] = entry
    return kept


def _first_diff(a, b) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at index {i}: {x!r} vs {y!r}"
    return "one list is a prefix of the other"


def _check_files(name, files, class_index, rows, workers, max_pixels, min_size, progress):
    """Pass 1: decode every file once, in parallel. Returns (good items, their report rows, max w*h)."""
    check = partial(_check_one, max_pixels=max_pixels, min_size=min_size)
    results = []
    bar = tqdm(total=len(files), desc=f"check {name}", unit="img", disable=not progress,
               mininterval=0.5)
    if workers > 1 and len(files) > 64:
        with get_context("fork").Pool(workers) as pool:
            for r in pool.imap(check, [p for p, _ in files], chunksize=16):
                results.append(r)
                bar.update()
    else:
        for p, _ in files:
            results.append(check(p))
            bar.update()
    bar.close()
    good, good_rows, max_wh = [], [], 1
    for (p, c), (status, reason, w, h) in zip(files, results):
        if status == "skipped":
            rows.append((name, p, c, status, reason))
        else:
            good.append((p, class_index[c]))
            good_rows.append([name, p, c, status, reason])
            max_wh = max(max_wh, w * h)
    return good, good_rows, max_wh


def _write_split(out, name, good, good_rows, rows, fields, *, workers, chunk_size, page_size,
                 max_resolution, max_wh, max_pixels, min_size, progress):
    """Pass 2: FFCV writes only checked files into a temporary file. Returns (tmp or None, good,
    good_rows) after dropping files that failed while writing (changed on disk since pass 1)."""
    max_side = max_resolution or int(math.isqrt(max_wh)) + 1
    raw_bytes = 3 * min(max_wh, max_side * max_side) if max_resolution else 3 * max_wh
    tmp = out / f".{name}.beton.{os.getpid()}.tmp"
    for _attempt in range(3):
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
            return None, good, good_rows
    else:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{out / (name + '.beton')}: files kept failing while writing; "
                           f"see {out / 'report.csv'}")
    info = check_beton(tmp)
    if info["num_samples"] != len(good):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{out / (name + '.beton')}: wrote {info['num_samples']} samples, "
                           f"expected {len(good)}")
    return tmp, good, good_rows


def _commit(out, source, staged, kept, rows, summary, failed_splits, build_id, settings, log):
    """Move every staged file into place, then classes.json, report.csv and manifest.json (last):
    each rename is atomic, and a run killed between them leaves files whose build ids disagree,
    which ``pipeline.beton --verify`` names (never a silently mixed OUT)."""
    for name in failed_splits:   # an old file of a split that failed now is not part of this build
        for p in (out / f"{name}.beton", sums_path(out / f"{name}.beton"), stamp_path(out / f"{name}.beton")):
            if p.exists():
                p.unlink()
                log(f"removed {p}: left from an earlier build, split {name!r} failed now")
    entries = dict(kept)
    for name, (tmp, sums_tmp) in staged.items():
        final = out / f"{name}.beton"
        os.replace(sums_tmp, sums_path(final))
        os.replace(tmp, final)
        s = summary[name]
        entries[name] = dict(file=final.name, sums=sums_path(final).name, build_id=build_id,
                             num_samples=s["num_samples"], size_bytes=s["bytes"])
    staged.clear()
    per_class = Counter((r[0], r[2]) for r in rows if r[3] in ("converted", "fixed"))
    old_counts = _old_counts(out) if kept else {}
    classes = [dict(index=i, folder=c, name=source.class_names.get(c, ""),
                    images={**{s: old_counts.get(c, {}).get(s, 0) for s in kept},
                            **{s: per_class[(s, c)] for s in source.splits}})
               for i, c in enumerate(source.classes)]
    classes_text = json.dumps(classes, indent=1)
    write_atomic(out / "classes.json", classes_text)
    old_rows = _old_report_rows(out, set(kept)) if kept else []
    buf = io.StringIO(newline="")
    _write_report(buf, old_rows + rows)
    write_atomic(out / "report.csv", buf.getvalue())
    manifest = dict(format=MANIFEST_FORMAT, build_id=build_id,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    source=str(Path(source.root).resolve()), settings=settings,
                    num_classes=len(classes),
                    classes_sha256=hashlib.sha256(classes_text.encode()).hexdigest(), splits=entries)
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    return dict(out=str(out), splits=summary, classes=len(classes), report=str(out / "report.csv"),
                classes_json=str(out / "classes.json"), manifest=str(out / "manifest.json"),
                build_id=build_id, failed_splits=failed_splits)


def _old_counts(out: Path) -> dict:
    try:
        return {c["folder"]: c.get("images", {}) for c in json.loads((out / "classes.json").read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _old_report_rows(out: Path, splits: set) -> list:
    try:
        with open(out / "report.csv", newline="", encoding="utf-8") as f:
            return [tuple(r) for r in list(csv.reader(f))[1:] if r and r[0] in splits]
    except OSError:
        return []


def _write_report(f, rows):
    w = csv.writer(f)
    w.writerow(["split", "path", "class", "status", "reason"])
    w.writerows(rows)


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


def _lock_hint(pid) -> str:
    """A killed build's forked workers share its flock for a few seconds after it died."""
    if not pid:
        return ""
    try:
        os.kill(pid, 0)
        return ""
    except ProcessLookupError:
        return (f" (process {pid} has ended; its worker processes hold the lock until they exit, "
                f"usually seconds: retry then)")
    except PermissionError:
        return ""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default shown, description and epilog kept as written."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.build_ffcv", formatter_class=_HelpFormatter,
        description="Convert an image folder to FFCV .beton files (one per split).\n\n"
                    "SRC: an ImageNet-style tree (SRC/train/<class>/*, SRC/val/<class>/*), a single\n"
                    "split folder (SRC/<class>/*), ILSVRC's flat validation folder with\n"
                    "LOC_val_solution.csv (found in the split folder or up to 4 folders above it, or\n"
                    "--val-labels), or Kaggle's download (SRC/ILSVRC/Data/CLS-LOC/...). Hidden and\n"
                    "system folders (.*, __MACOSX, @eaDir, ...) and files (._*, .DS_Store, Thumbs.db)\n"
                    "are neither classes nor images; the loaders follow the same rules.\n\n"
                    "Writes into OUT (created if missing; it must not lie inside SRC):\n"
                    "  OUT/<split>.beton       fields image (RGBImageField) and label (IntField)\n"
                    "  OUT/<split>.beton.sums  one checksum per sample (python -m pipeline.beton --verify)\n"
                    "  OUT/classes.json        index, folder, name and images per split of every class\n"
                    "  OUT/report.csv          one row per file: converted, fixed or skipped, with the reason\n"
                    "  OUT/manifest.json       what this build wrote (build id, source, settings), last\n"
                    "  OUT/.lock               held while a build writes OUT: a second build exits 2\n"
                    "Bad files never stop the conversion; each is fully decoded before FFCV sees it.",
        epilog="exit codes: 0 done; 1 a split had no usable image; 2 missing/empty/unlabelled source, "
               "bad option, OUT inside SRC or holding another build, OUT in use by another build.\n"
               "example: python -m pipeline.build_ffcv ~/imagenet data/imagenet_ffcv "
               "--max-resolution 256 --num-workers 32")
    ap.add_argument("src", help="source folder")
    ap.add_argument("out", help="output folder (created if missing)")
    ap.add_argument("--splits", nargs="+", default=None, help="only these splits (None: all found)")
    ap.add_argument("--max-resolution", type=int, default=DEFAULT_MAX_RESOLUTION,
                    help="longest side stored, in px (headroom for RandomResizedCrop to 224); 0 keeps "
                         "the original size")
    ap.add_argument("--write-mode", choices=WRITE_MODES, default="jpg",
                    help="jpg (~8x smaller than raw), raw (uint8 pixels), smart (raw when small, jpg "
                         "above --smart-threshold), proportion (jpg with probability "
                         "--compress-probability)")
    ap.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality")
    ap.add_argument("--compress-probability", type=float, default=0.5,
                    help="proportion mode: share of images stored as JPEG")
    ap.add_argument("--smart-threshold", type=int, default=None,
                    help="smart mode: raw size in bytes above which an image is stored as JPEG "
                         "(None: 3*(max_resolution/2)^2)")
    ap.add_argument("--num-workers", type=int, default=None, help="processes (None: CPU count)")
    ap.add_argument("--subset", type=int, default=None, help="at most N images per class (quick runs)")
    ap.add_argument("--chunk-size", type=int, default=100, help="samples per FFCV work item")
    ap.add_argument("--page-size", type=int, default=None,
                    help="FFCV page size in bytes, a power of two (None: fits the largest image)")
    ap.add_argument("--val-labels", default=None,
                    help="LOC_val_solution.csv for a flat ILSVRC val folder (None: searched next to it)")
    ap.add_argument("--class-names", default=None,
                    help="human class names: classes.tsv (index, folder, name) or "
                         "LOC_synset_mapping.txt (None: searched next to the data)")
    ap.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                    help="skip images with a side below this many px")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="skip images above this many pixels: decompression bombs (PIL's limit)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --subset choice")
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
    except LockedError as e:
        print(f"error: {e}{_lock_hint(e.pid)}", file=sys.stderr)
        return 2
    except (SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if result["failed_splits"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
