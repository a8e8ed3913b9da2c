"""Checking that a file is a complete, valid FFCV ``.beton`` before anyone reads it.

Why: FFCV's ``Reader``/``Loader`` trust the file. Given a truncated file, a killed conversion's
leftover or some other file renamed ``.beton``, they fail far from the cause (numpy errors on
``fromfile``, a ``KeyError`` on a type id, or a segfault in the JIT-compiled reader). This module
reads only the header, field descriptors, per-sample metadata and allocation table -- using
FFCV's own dtypes from ``ffcv.types`` -- and raises :class:`BetonError` naming the file and the
problem. It costs a few milliseconds plus one pass over the metadata (about 20 MB for ImageNet).

File layout (FFCV 1.0, format version 2)::

    header | field descriptors | per-sample metadata | pages of data (page aligned) | alloc table

A sample's bytes are its metadata row (the label lives there, and the image's size, mode and data
pointer) plus every allocation-table entry with its ``sample_id`` (the stored JPEG or raw pixels).
FFCV keeps no checksum of either, so a zeroed or flipped region decodes into wrong pixels without
a word. ``pipeline.build_ffcv`` therefore writes a sidecar ``<file>.sums`` (:func:`write_sums`):
one 128-bit BLAKE2b digest per sample over exactly those bytes, plus one over the header, field
descriptors and allocation table; :func:`verify_beton` recomputes them and names the bad samples
(``python -m pipeline.beton --verify FILE``). It costs one sequential read of the file.

A passing check is remembered in ``<file>.verified`` (:func:`verified_stamp`): the identity (size,
mtime, ctime, inode) of the file, its ``.sums`` and the ``manifest.json`` beside it, as they were
when the read began. ``verify_beton(..., trust_stamp=True)`` (the trainer's ``data.verify=auto``)
then skips the read while all three are unchanged. Any write, copy, replacement or ``touch`` of
them changes the ctime, which no user call can set back, so the stamp no longer matches and the
next check reads the file again. What a stamp cannot see is damage below the file system (a disk
flipping bits in place); ``data.verify=always`` and ``--verify`` re-read every time.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.files import write_atomic

SUMS_SUFFIX = ".sums"
SUMS_FORMAT = "maepipe-beton-sums-1"
STAMP_SUFFIX = ".verified"
STAMP_FORMAT = "maepipe-beton-verified-1"
DIGEST_BYTES = 16


class BetonError(ValueError):
    """The file is not a complete, valid FFCV .beton; the message names it."""


def _fail(path, problem: str):
    raise BetonError(f"{path}: not a usable FFCV .beton file: {problem}")


def check_beton(path) -> dict:
    """Validate ``path`` as a complete FFCV .beton; return a summary or raise :class:`BetonError`.

    Returns ``dict(path, num_samples, fields, page_size, size_bytes)`` where ``fields`` maps each
    field name to its FFCV field class name (``{"image": "RGBImageField", "label": "IntField"}``)
    in file order; unknown (custom) field types are named ``"custom:<type id>"``.

    Checks, in order: the file exists and is larger than a header; the format version is FFCV's;
    page size and field count are sane; field descriptors name known types; the metadata table fits
    before the allocation table; the allocation table exists (a killed writer leaves its pointer at
    0), lies at the end of the file and points only inside the data region; and every image/bytes
    sample's data pointer is one the table allocated (so every sample is readable).
    """
    # FFCV imported here, not at module top: it pulls in numba and cv2 (seconds), which importers
    # of pipeline that never open a .beton should not pay
    from ffcv.types import get_handlers, get_metadata_type

    path = Path(path)
    size, head = _read_header(path)
    descs, fields, desc_end = _read_fields(path, head["num_fields"], size)
    if head["alloc_ptr"] == 0:
        _fail(path, "incomplete: the allocation table was never written "
                    "(the conversion that wrote it was interrupted)")
    summary = dict(path=str(path), num_samples=head["num_samples"], fields=fields,
                   page_size=head["page_size"], size_bytes=size)
    if any(t.startswith("custom") for t in fields.values()):
        return summary   # a custom field's metadata layout is unknown: the header checks are all we can do
    meta_type = get_metadata_type(get_handlers(descs))
    table = _read_alloc_table(path, size, head, desc_end + head["num_samples"] * meta_type.itemsize)
    meta = np.fromfile(path, dtype=meta_type, count=head["num_samples"], offset=desc_end)
    if len(meta) != head["num_samples"]:
        _fail(path, f"truncated metadata: {len(meta)} of {head['num_samples']} samples")
    _check_samples(path, fields, meta, table)
    return summary


def _read_header(path: Path) -> tuple[int, dict]:
    """(file size, header values) of a file that exists, holds a header of FFCV's format version
    and has a sane field count and page size; BetonError otherwise."""
    from ffcv.types import CURRENT_VERSION, HeaderType

    if not path.exists():
        raise BetonError(f"{path}: .beton file not found")
    if not path.is_file():
        raise BetonError(f"{path}: not a file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HeaderType.itemsize)
    except OSError as e:
        raise BetonError(f"{path}: cannot read: {e.strerror or e}") from None
    if size < HeaderType.itemsize:
        _fail(path, f"file is {size} bytes, smaller than the {HeaderType.itemsize}-byte header "
                    "(empty or truncated)")
    header = np.frombuffer(raw, dtype=HeaderType, count=1)[0]
    version = int(header["version"])
    if version != CURRENT_VERSION:
        _fail(path, f"format version {version}, expected {CURRENT_VERSION} "
                    "(a foreign file, or written by another FFCV version)")
    head = dict(num_fields=int(header["num_fields"]), page_size=int(header["page_size"]),
                num_samples=int(header["num_samples"]), alloc_ptr=int(header["alloc_table_ptr"]))
    if not 1 <= head["num_fields"] <= 64:
        _fail(path, f"implausible field count {head['num_fields']}")
    page_size = head["page_size"]
    if page_size < (1 << 12) or page_size & (page_size - 1):
        _fail(path, f"page size {page_size} is not a power of two >= 4096")
    return size, head


def _read_fields(path: Path, num_fields: int, size: int) -> tuple[np.ndarray, dict, int]:
    """(field descriptors, {name: field class name}, end offset of the descriptors)."""
    from ffcv.types import TYPE_ID_HANDLER, FieldDescType, HeaderType
    from ffcv.utils import decode_null_terminated_string

    desc_end = HeaderType.itemsize + num_fields * FieldDescType.itemsize
    if size < desc_end:
        _fail(path, f"truncated: {size} bytes, field descriptors need {desc_end}")
    descs = np.fromfile(path, dtype=FieldDescType, count=num_fields, offset=HeaderType.itemsize)
    names, types = [], []
    for d in descs:
        tid = int(d["type_id"])
        try:
            names.append(decode_null_terminated_string(d["name"]))
        except UnicodeDecodeError:
            _fail(path, "field name is not ASCII (foreign file)")
        if tid not in TYPE_ID_HANDLER:
            _fail(path, f"field {names[-1]!r} has unknown type id {tid} (foreign file)")
        handler = TYPE_ID_HANDLER[tid]
        types.append(handler.__name__ if handler is not None else f"custom:{tid}")
    return descs, dict(zip(names, types)), desc_end


def _read_alloc_table(path: Path, size: int, head: dict, meta_end: int) -> np.ndarray:
    """The allocation table, checked to lie after the metadata, at the end of the file, and to
    point only into the data region (from the first page after the metadata to the table)."""
    from ffcv.types import ALLOC_TABLE_TYPE
    from ffcv.utils import align_to_page

    alloc_ptr = head["alloc_ptr"]
    data_start = align_to_page(meta_end, head["page_size"])
    if alloc_ptr < meta_end:
        _fail(path, f"allocation table pointer {alloc_ptr} lies inside the metadata "
                    f"(which ends at {meta_end})")
    if alloc_ptr > size:
        _fail(path, f"truncated: {size} bytes, but the allocation table starts at byte {alloc_ptr}")
    if (size - alloc_ptr) % ALLOC_TABLE_TYPE.itemsize:
        _fail(path, f"truncated or padded: the allocation table ({size - alloc_ptr} bytes) is not "
                    f"a whole number of {ALLOC_TABLE_TYPE.itemsize}-byte entries")
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=alloc_ptr)
    if len(table):
        if int(table["sample_id"].max()) >= head["num_samples"]:
            _fail(path, "allocation table names a sample id beyond the sample count")
        ends = table["ptr"].astype(np.uint64) + table["size"].astype(np.uint64)
        if int(table["ptr"].min()) < data_start or int(ends.max()) > alloc_ptr:
            _fail(path, "allocation table points outside the data region")
    return table


def _check_samples(path: Path, fields: dict, meta: np.ndarray, table: np.ndarray) -> None:
    """Every sample's data pointer is one the table allocated; images have a known storage mode
    and a non-zero size."""
    allocated = np.sort(table["ptr"]) if len(table) else np.zeros(0, np.uint64)
    for i, (name, t) in enumerate(fields.items()):
        col = meta[meta.dtype.names[i]]
        if col.dtype.names and "data_ptr" in col.dtype.names:
            found = np.isin(col["data_ptr"], allocated)
            if not found.all():
                bad = int(np.flatnonzero(~found)[0])
                _fail(path, f"field {name!r}: {int((~found).sum())} sample(s) point to unallocated "
                            f"data (first: sample {bad}); the file is incomplete or corrupt")
        if t == "RGBImageField" and len(meta):
            if not np.isin(col["mode"], (0, 1)).all():
                _fail(path, f"field {name!r}: unknown image storage mode")
            if (col["width"] == 0).any() or (col["height"] == 0).any():
                _fail(path, f"field {name!r}: an image has zero width or height")


def sums_path(path) -> Path:
    """Where the checksums of ``path`` live: ``<path>.sums`` beside it."""
    return Path(str(path) + SUMS_SUFFIX)


def _layout(path):
    """(header, metadata rows as raw bytes N x itemsize, alloc table, structure digest)."""
    from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, get_handlers, get_metadata_type

    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    n_fields, n = int(header["num_fields"]), int(header["num_samples"])
    descs = np.fromfile(path, dtype=FieldDescType, count=n_fields, offset=HeaderType.itemsize)
    meta_type = get_metadata_type(get_handlers(descs))
    meta_off = HeaderType.itemsize + n_fields * FieldDescType.itemsize
    meta = np.fromfile(path, dtype=np.uint8, count=n * meta_type.itemsize, offset=meta_off)
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=int(header["alloc_table_ptr"]))
    structure = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open(path, "rb") as f:
        structure.update(f.read(meta_off))   # header + field descriptors
    structure.update(table.tobytes())
    return header, meta.reshape(n, meta_type.itemsize), table, structure.digest()


def sample_digests(path) -> tuple:
    """``(digests N x 16 uint8, structure digest bytes)`` of a checked .beton (see module doc).

    Sample ``i``'s digest covers its metadata row and, in pointer order, the bytes of every
    allocation with ``sample_id == i``."""
    check_beton(path)
    _, meta, table, structure = _layout(path)
    n = len(meta)
    digests = np.zeros((n, DIGEST_BYTES), np.uint8)
    order = np.lexsort((table["ptr"], table["sample_id"]))
    ids, ptrs, sizes = (table[k][order].astype(np.int64) for k in ("sample_id", "ptr", "size"))
    bounds = np.searchsorted(ids, np.arange(n + 1))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for i in range(n):
        h = hashlib.blake2b(meta[i].tobytes(), digest_size=DIGEST_BYTES)
        for j in range(bounds[i], bounds[i + 1]):
            h.update(data[ptrs[j]:ptrs[j] + sizes[j]])
        digests[i] = np.frombuffer(h.digest(), np.uint8)
    del data
    return digests, structure


def write_sums(path, out=None, build_id: str = "") -> Path:
    """Compute the checksums of ``path`` and write them (atomically) to ``out`` (default
    :func:`sums_path`): an ``.npz`` with ``digests`` (N x 16 uint8), ``structure`` (16 bytes) and
    ``info`` (JSON: format, algorithm, num_samples, size_bytes, build_id)."""
    digests, structure = sample_digests(path)
    out = Path(out) if out else sums_path(path)
    info = dict(format=SUMS_FORMAT, algorithm=f"blake2b-{DIGEST_BYTES * 8}", num_samples=len(digests),
                size_bytes=os.path.getsize(path), build_id=build_id)
    buf = io.BytesIO()
    np.savez(buf, digests=digests, structure=np.frombuffer(structure, np.uint8),
             info=np.frombuffer(json.dumps(info).encode(), np.uint8))
    return write_atomic(out, buf.getvalue())


def read_sums(path) -> tuple:
    """``(digests, structure bytes, info dict)`` from a ``.sums`` file; :class:`BetonError` if unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(z["info"].tobytes().decode())
            digests, structure = z["digests"], z["structure"].tobytes()
    # untrusted file: a bad .npz (BadZipFile, OSError, ValueError), a missing array (KeyError) or
    # bad JSON/UTF-8 in it (ValueError) each mean "unusable"
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise BetonError(f"{path}: not a readable checksum file ({type(e).__name__}: {e})") from None
    if info.get("format") != SUMS_FORMAT or digests.ndim != 2 or digests.shape[1] != DIGEST_BYTES:
        raise BetonError(f"{path}: not a {SUMS_FORMAT} checksum file")
    return digests, structure, info


@dataclass
class VerifyResult:
    """What :func:`verify_beton` found. ``ok``: the file is structurally valid and, when checksums
    were available, every sample matches them. ``checked``: ``"checksums"`` or ``"structure"``
    (no ``.sums`` file: only :func:`check_beton`'s tests ran)."""

    path: str
    ok: bool
    checked: str
    num_samples: int = 0
    bad_samples: list = field(default_factory=list)   # sample indices whose bytes changed
    problems: list = field(default_factory=list)      # one line each
    build_id: str = ""
    seconds: float = 0.0
    verified_at: float = 0.0   # > 0: the result is a stamp's (no read), of a check at this time
    identity: dict | None = None   # the files as the check began (what a stamp records)

    @property
    def message(self) -> str:
        """One line for a user: what is wrong (or that all is well) and with which file."""
        if self.ok and self.verified_at:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.verified_at))
            return (f"{self.path}: ok, {self.num_samples} samples, all sample checksums matched when "
                    f"checked on {when}, file unchanged since ({stamp_path(self.path).name})")
        if self.ok:
            how = "all sample checksums match" if self.checked == "checksums" else \
                "structure valid; no checksum file, samples not verified"
            return f"{self.path}: ok, {self.num_samples} samples, {how}"
        return f"{self.path}: " + "; ".join(self.problems)


def _bad_list(bad, limit=20) -> str:
    shown = ", ".join(str(i) for i in bad[:limit])
    return shown + (f", ... ({len(bad)} in all)" if len(bad) > limit else "")


def verify_beton(path, sums=None, require_sums: bool = False, trust_stamp: bool = False,
                 record: bool = False) -> VerifyResult:
    """Check ``path`` completely: structure (:func:`check_beton`), then every sample against the
    checksums in ``sums`` (default ``<path>.sums``), and, when ``manifest.json`` of the
    ``build_ffcv`` output folder is beside it, that the file belongs to that build.

    Never raises for a bad file: returns a :class:`VerifyResult` whose ``ok`` is False and whose
    ``problems`` / ``message`` name the file and the bad sample indices. A missing ``.sums``
    file is a problem only with ``require_sums``. Costs one read of the whole file.

    ``trust_stamp``: when ``<path>.verified`` matches the files as they are now
    (:func:`verified_stamp`), return its result without reading (``verified_at`` set).
    ``record``: after a check against checksums that passed, write that stamp
    (:func:`record_verified`; skipped where the folder is read-only).
    """
    t0 = time.time()
    path = Path(path)
    sp = Path(sums) if sums else sums_path(path)
    if trust_stamp:
        stamp = verified_stamp(path, sp)
        if stamp is not None:
            return VerifyResult(str(path), ok=True, checked="checksums", num_samples=stamp["num_samples"],
                                build_id=stamp["build_id"], seconds=time.time() - t0,
                                verified_at=stamp["verified_at"])
    res = VerifyResult(str(path), ok=False, checked="structure", identity=_identity(path, sp))
    try:
        res.num_samples = check_beton(path)["num_samples"]
    except BetonError as e:
        res.problems.append(str(e).removeprefix(f"{path}: "))
        return res
    if not sp.is_file():
        if require_sums:
            res.problems.append(f"no checksum file {sp} (rebuild with pipeline.build_ffcv, or "
                                f"write one for this file with python -m pipeline.beton --write-sums)")
        res.ok = not res.problems
        res.seconds = time.time() - t0
        return res
    try:
        want, want_structure, info = read_sums(sp)
    except BetonError as e:
        res.problems.append(str(e))
        return res
    res.checked, res.build_id = "checksums", info.get("build_id", "")
    have, structure = sample_digests(path)
    if len(want) != len(have):
        res.problems.append(f"{sp} holds {len(want)} sample checksums, the file {len(have)} samples "
                            f"(checksums of another file?)")
    else:
        res.bad_samples = np.flatnonzero((want != have).any(axis=1)).tolist()
        if res.bad_samples:
            res.problems.append(f"{len(res.bad_samples)} of {len(have)} samples differ from their "
                                f"checksums (corrupt data): sample indices {_bad_list(res.bad_samples)}")
        if structure != want_structure:
            res.problems.append("header, field descriptors or allocation table differ from the checksums")
    _check_manifest(path, res)
    res.ok = not res.problems
    res.seconds = time.time() - t0
    if record and res.ok:
        record_verified(res, sp)
    return res


def stamp_path(path) -> Path:
    """Where a passing check of ``path`` is remembered: ``<path>.verified`` beside it."""
    return Path(str(path) + STAMP_SUFFIX)


def _file_identity(p: Path) -> list | None:
    """[size, mtime_ns, ctime_ns, inode] of ``p``, or None when it does not exist. The ctime moves
    on every change to the file's bytes or metadata and cannot be set by a user call."""
    try:
        st = p.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _identity(path: Path, sums: Path) -> dict:
    return {"beton": _file_identity(path), "sums": _file_identity(sums),
            "manifest": _file_identity(path.parent / "manifest.json")}


def record_verified(result: VerifyResult, sums=None) -> Path | None:
    """Remember ``result`` (a passing check against checksums) in ``<file>.verified``, written
    atomically, naming the identity of the file, its checksums and the manifest beside it as the
    check began. Nothing is written when any of them changed during the check (the read may have
    seen part of each version), for a result without checksums, or where the folder cannot be
    written (a read-only dataset: later runs check again). Returns the stamp's path or None."""
    path = Path(result.path)
    sp = Path(sums) if sums else sums_path(path)
    if not (result.ok and result.checked == "checksums" and result.identity
            and result.identity["beton"] and result.identity["sums"]):
        return None
    if _identity(path, sp) != result.identity:
        return None
    stamp = {"format": STAMP_FORMAT, "file": path.name, "sums": sp.name, "identity": result.identity,
             "num_samples": result.num_samples, "build_id": result.build_id, "verified_at": time.time()}
    try:
        return write_atomic(stamp_path(path), json.dumps(stamp, indent=1), fsync=False)
    except OSError:
        return None


def verified_stamp(path, sums=None) -> dict | None:
    """The record of ``<path>.verified`` when it describes exactly the file, its checksums and the
    ``manifest.json`` beside it as they are now; None otherwise (no stamp, an unreadable or foreign
    one, or any of the three files changed, appeared or went away since)."""
    path = Path(path)
    sp = Path(sums) if sums else sums_path(path)
    try:
        stamp = json.loads(stamp_path(path).read_text())
        ok = (isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT
              and stamp.get("file") == path.name and stamp.get("sums") == sp.name
              and isinstance(stamp.get("num_samples"), int) and isinstance(stamp.get("build_id"), str)
              and isinstance(stamp.get("verified_at"), (int, float)))
    except (OSError, ValueError):
        return None
    current = _identity(path, sp)
    if not ok or current["beton"] is None or current["sums"] is None or stamp.get("identity") != current:
        return None
    return stamp


def _check_manifest(path: Path, res: VerifyResult) -> None:
    """A build_ffcv output folder's files must all come from one build (issue 15: no mixed OUT)."""
    mf = path.parent / "manifest.json"
    if not mf.is_file():
        return
    try:
        manifest = json.loads(mf.read_text())
        entry = next((s for s in manifest.get("splits", {}).values()
                      if s.get("file") == path.name), None)
    except (OSError, ValueError, AttributeError) as e:
        res.problems.append(f"{mf}: unreadable ({e})")
        return
    if entry is None:
        res.problems.append(f"{mf} does not list {path.name}: the file is not part of that build")
    elif entry.get("build_id") != res.build_id:
        res.problems.append(f"mixed output folder: {path.name} comes from build {res.build_id or '?'}, "
                            f"{mf.name} (and classes.json) from build {entry.get('build_id')}")


def read_samples(path, indices=None):
    """Yield ``(index, image H x W x 3 uint8 RGB, label int)`` from a checked .beton, without a Loader.

    Why: audits and tests need the stored pixels exactly as written (no crop, no resize, any image
    size), and FFCV's ``Loader`` needs same-sized images per batch and a JIT warm-up. Uses FFCV's
    ``Reader`` for the tables and OpenCV (what FFCV itself uses) to decode the stored JPEGs.
    Expects fields named ``image`` (RGBImageField) and ``label`` (IntField), as ``build_ffcv`` writes.
    """
    import cv2  # with FFCV: slow imports, only when samples are really read
    from ffcv.reader import Reader

    info = check_beton(path)
    if info["fields"].get("image") != "RGBImageField" or info["fields"].get("label") != "IntField":
        raise BetonError(f"{path}: expected fields image (RGBImageField) and label (IntField), "
                         f"found {info['fields']}")
    r = Reader(str(path))
    table = r.alloc_table
    ptr_size = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    with open(path, "rb") as f:
        for i in (range(r.num_samples) if indices is None else indices):
            meta = r.metadata[i]
            img_meta, label = meta["f0"], int(meta["f1"])
            ptr = int(img_meta["data_ptr"])
            f.seek(ptr)
            buf = np.frombuffer(f.read(ptr_size[ptr]), np.uint8)
            h, w = int(img_meta["height"]), int(img_meta["width"])
            if int(img_meta["mode"]) == 0:  # jpg
                img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            else:  # raw
                img = buf[: h * w * 3].reshape(h, w, 3)
            yield i, img, label


def main(argv=None) -> int:
    """``python -m pipeline.beton [--verify] FILE...``: check each file, print its summary or the problem."""
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.beton", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Check that files are complete, valid FFCV .beton files (header, tables, "
                    "pointers: milliseconds). --verify also reads every sample and compares it "
                    "with the checksums pipeline.build_ffcv stored in FILE.sums, naming the bad "
                    "sample indices; a pass is recorded in FILE.verified, which lets the trainer "
                    "(data.verify=auto) skip the read while the file, its sums and manifest.json "
                    "are unchanged. Writes nothing else, except FILE.sums with --write-sums.",
        epilog="exit codes: 0 all files good; 1 a file is bad (the line says which samples/why).")
    ap.add_argument("files", nargs="+", help=".beton files to check")
    ap.add_argument("--verify", action="store_true", default=False,
                    help="also verify every sample against FILE.sums (one read of the file)")
    ap.add_argument("--require-sums", action="store_true", default=False,
                    help="with --verify: a missing FILE.sums is an error")
    ap.add_argument("--write-sums", action="store_true", default=False,
                    help="write FILE.sums for files built without it (trusts their current bytes)")
    args = ap.parse_args(argv)
    rc = 0
    for f in args.files:
        try:
            if args.write_sums:
                print(f"wrote {write_sums(f)}")
            elif args.verify:
                r = verify_beton(f, require_sums=args.require_sums, record=True)
                print(r.message if r.ok else f"error: {r.message}")
                rc = rc or (0 if r.ok else 1)
            else:
                print(json.dumps(check_beton(f)))
        except BetonError as e:
            print(f"error: {e}")
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
