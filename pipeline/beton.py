"""Checking that a file is a complete, valid FFCV ``.beton`` before anyone reads it.

Why: FFCV's ``Reader``/``Loader`` trust the file. Given a truncated file, a killed conversion's
leftover or some other file renamed ``.beton``, they fail far from the cause (numpy errors on
``fromfile``, a ``KeyError`` on a type id, or a segfault in the JIT-compiled reader). This module
reads only the header, field descriptors, per-sample metadata and allocation table -- using
FFCV's own dtypes from ``ffcv.types`` -- and raises :class:`BetonError` naming the file and the
problem. It costs a few milliseconds plus one pass over the metadata (about 20 MB for ImageNet).

File layout (FFCV 1.0, format version 2)::

    header | field descriptors | per-sample metadata | pages of data (page aligned) | alloc table
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


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
    from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType,
                            HeaderType, get_handlers, get_metadata_type)
    from ffcv.utils import align_to_page, decode_null_terminated_string

    path = Path(path)
    if not path.exists():
        raise BetonError(f"{path}: .beton file not found")
    if not path.is_file():
        raise BetonError(f"{path}: not a file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HeaderType.itemsize)
    except OSError as e:
        raise BetonError(f"{path}: cannot read: {e.strerror or e}") from None
    if size < HeaderType.itemsize:
        _fail(path, f"file is {size} bytes, smaller than the {HeaderType.itemsize}-byte header "
                    "(empty or truncated)")
    header = np.frombuffer(head, dtype=HeaderType, count=1)[0]
    version = int(header["version"])
    if version != CURRENT_VERSION:
        _fail(path, f"format version {version}, expected {CURRENT_VERSION} "
                    "(a foreign file, or written by another FFCV version)")
    num_fields, page_size = int(header["num_fields"]), int(header["page_size"])
    num_samples, alloc_ptr = int(header["num_samples"]), int(header["alloc_table_ptr"])
    if not 1 <= num_fields <= 64:
        _fail(path, f"implausible field count {num_fields}")
    if page_size < (1 << 12) or page_size & (page_size - 1):
        _fail(path, f"page size {page_size} is not a power of two >= 4096")

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
    fields = dict(zip(names, types))

    if alloc_ptr == 0:
        _fail(path, "incomplete: the allocation table was never written "
                    "(the conversion that wrote it was interrupted)")
    if any(t.startswith("custom") for t in types):
        return dict(path=str(path), num_samples=num_samples, fields=fields,
                    page_size=page_size, size_bytes=size)
    meta_type = get_metadata_type(get_handlers(descs))
    meta_end = desc_end + num_samples * meta_type.itemsize
    data_start = align_to_page(meta_end, page_size)
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
        if int(table["sample_id"].max()) >= num_samples:
            _fail(path, "allocation table names a sample id beyond the sample count")
        ends = table["ptr"].astype(np.uint64) + table["size"].astype(np.uint64)
        if int(table["ptr"].min()) < data_start or int(ends.max()) > alloc_ptr:
            _fail(path, "allocation table points outside the data region")
    meta = np.fromfile(path, dtype=meta_type, count=num_samples, offset=desc_end)
    if len(meta) != num_samples:
        _fail(path, f"truncated metadata: {len(meta)} of {num_samples} samples")
    allocated = np.sort(table["ptr"]) if len(table) else np.zeros(0, np.uint64)
    for i, (name, t) in enumerate(fields.items()):
        col = meta[meta.dtype.names[i]]
        if col.dtype.names and "data_ptr" in col.dtype.names:
            ptrs = col["data_ptr"]
            found = np.isin(ptrs, allocated)
            if not found.all():
                bad = int(np.flatnonzero(~found)[0])
                _fail(path, f"field {name!r}: {int((~found).sum())} sample(s) point to unallocated "
                            f"data (first: sample {bad}); the file is incomplete or corrupt")
        if t == "RGBImageField" and num_samples:
            if not np.isin(col["mode"], (0, 1)).all():
                _fail(path, f"field {name!r}: unknown image storage mode")
            if (col["width"] == 0).any() or (col["height"] == 0).any():
                _fail(path, f"field {name!r}: an image has zero width or height")
    return dict(path=str(path), num_samples=num_samples, fields=fields,
                page_size=page_size, size_bytes=size)


def read_samples(path, indices=None):
    """Yield ``(index, image H x W x 3 uint8 RGB, label int)`` from a checked .beton, without a Loader.

    Why: audits and tests need the stored pixels exactly as written (no crop, no resize, any image
    size), and FFCV's ``Loader`` needs same-sized images per batch and a JIT warm-up. Uses FFCV's
    ``Reader`` for the tables and OpenCV (what FFCV itself uses) to decode the stored JPEGs.
    Expects fields named ``image`` (RGBImageField) and ``label`` (IntField), as ``build_ffcv`` writes.
    """
    import cv2
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
    """``python -m pipeline.beton FILE...``: check each file, print its summary or the problem."""
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m pipeline.beton",
                                 description="Check that files are complete, valid FFCV .beton files.")
    ap.add_argument("files", nargs="+", help=".beton files to check")
    args = ap.parse_args(argv)
    rc = 0
    for f in args.files:
        try:
            print(json.dumps(check_beton(f)))
        except BetonError as e:
            print(f"error: {e}")
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
