"""Append-only columnar tables in a zarr v3 group that stay readable while written and after a kill.

Layout of one table (e.g. `metrics.zarr`): one 1-D zarr array per column, all the same length, and
the group attribute `runstore_table = {"format": 1, "rows": N, "columns": [[name, kind], ...]}`.

Why it is crash-safe: an append first grows and writes every column array, and only then commits
the new row count and schema in the group's `zarr.json`. zarr's LocalStore writes every file
(chunk or metadata) to a temporary name and renames it into place, so each file is always either
the old or the new version. Readers trust only the committed count: rows a killed writer wrote but
did not commit are invisible, and the next writer trims them. Appends from several processes are
serialised by a short advisory file lock beside the store.
"""
from __future__ import annotations

import math
import numbers
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import zarr

from common.locks import file_lock


ATTR = "runstore_table"
FORMAT = 1
KINDS = ("int64", "float64", "str")
_FILL = {"int64": 0, "float64": math.nan, "str": ""}
_DTYPE = {"int64": np.int64, "float64": np.float64, "str": str}


class StoreFormatError(ValueError):
    """A zarr store that runstore did not write (or a newer format)."""


def check_column_name(name: Any, where: str) -> str:
    """Column names become zarr node names: no '/', not empty, not '__'-prefixed."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("__") or name in (".", ".."):
        raise ValueError(f"{where}: invalid column name {name!r} (use letters, digits, '_', '.', '-'; no '/')")
    return name


def lock_path(store: Path) -> Path:
    return store.with_name(f".{store.name}.lock")


def _meta(group, where: Path) -> dict | None:
    meta = group.attrs.get(ATTR)
    if meta is None:
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreFormatError(f"{where}: unknown table format {meta!r} (runstore writes format {FORMAT})")
    return meta


# ----------------------------------------------------------------------------- value coercion
def _scalar(v: Any) -> Any:
    """numpy / torch 0-d values -> Python scalars (tensors must already be on the CPU side)."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 and not isinstance(v, (str, bytes)):
        return v.item()
    return v


def infer_kind(values: Iterable[Any]) -> str:
    """Kind of a new column from its first non-missing value: text -> 'str', anything numeric -> 'float64'."""
    for v in values:
        v = _scalar(v)
        if v is None:
            continue
        return "str" if isinstance(v, str) else "float64"
    return "float64"


def coerce_column(values: list[Any], kind: str, name: str, where: str, required: bool = False) -> np.ndarray:
    """A list of row values -> one numpy column of `kind`, with clear errors naming row and column."""
    out = []
    for i, v in enumerate(values):
        v = _scalar(v)
        if v is None or (kind == "int64" and isinstance(v, float) and math.isnan(v)):
            if required:
                raise ValueError(f"{where}: row {i} has no value for required column {name!r}")
            out.append(_FILL[kind])
            continue
        if kind == "str":
            if isinstance(v, numbers.Real) and not isinstance(v, str):
                v = str(v)  # e.g. a sweep's "value" column holding both "block" and 0.75
            if not isinstance(v, str):
                raise TypeError(f"{where}: column {name!r} holds text, row {i} has {type(v).__name__} {v!r}")
            out.append(v)
        elif kind == "int64":
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or float(v) != int(v):
                raise TypeError(f"{where}: column {name!r} holds integers, row {i} has {v!r}")
            out.append(int(v))
        else:
            if not isinstance(v, numbers.Real):
                raise TypeError(f"{where}: column {name!r} holds numbers, row {i} has {type(v).__name__} {v!r}")
            out.append(float(v))
    if kind == "str":
        return np.array(out, dtype=object) if out else np.zeros(0, dtype=object)
    return np.asarray(out, dtype=_DTYPE[kind])


# ----------------------------------------------------------------------------- writer
class TableWriter:
    """Appends rows to one table. Cheap to keep open; every append re-checks the committed
    state under the lock, so another process's appends are never overwritten."""

    def __init__(self, path: Path, base: Mapping[str, str], required: Iterable[str] = (),
                 chunk_rows: int = 8192):
        self.path = Path(path)
        self.base = dict(base)
        self.required = set(required)
        self.chunk_rows = int(chunk_rows)
        self.rows = 0
        self.columns: dict[str, str] = {}
        self._arrays: dict[str, Any] = {}
        with file_lock(lock_path(self.path)):
            self._load()
            self._remove_partials()

    def _load(self) -> None:
        """(Re)open the store: committed schema, arrays trimmed to the committed row count."""
        self.group = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        meta = _meta(self.group, self.path)
        self.rows = int(meta["rows"]) if meta else 0
        self.columns = {str(n): str(k) for n, k in meta["columns"]} if meta else {}
        self._arrays = {}
        for name in self.columns:
            arr = self.group[name]
            if arr.shape[0] != self.rows:  # a killed writer's uncommitted tail
                arr.resize((self.rows,))
            self._arrays[name] = arr
        missing = {n: k for n, k in self.base.items() if n not in self.columns}
        for name, kind in missing.items():
            self._add_column(name, kind)
        if meta is None or missing:
            self._commit()

    def _remove_partials(self) -> None:
        """Temporary files of writes interrupted by a kill (zarr's `*.partial`)."""
        for p in self.path.rglob("*.partial"):
            p.unlink(missing_ok=True)

    def _add_column(self, name: str, kind: str) -> None:
        check_column_name(name, str(self.path))
        if kind not in KINDS:
            raise ValueError(f"{self.path}: unknown column kind {kind!r}")
        # Existing rows read as the fill value (NaN / ""), so a column may appear mid-run.
        arr = self.group.create_array(name, shape=(self.rows,), dtype=_DTYPE[kind],
                                      chunks=(self.chunk_rows,), fill_value=_FILL[kind], overwrite=True)
        self._arrays[name] = arr
        self.columns[name] = kind

    def _commit(self) -> None:
        self.group.attrs[ATTR] = {"format": FORMAT, "rows": int(self.rows),
                                  "columns": [[n, k] for n, k in self.columns.items()]}

    def append_rows(self, rows: list[Mapping[str, Any]]) -> int:
        """Append `rows` (dicts; missing keys read as NaN/"") and commit. Returns the new row count."""
        if not rows:
            return self.rows
        where = str(self.path)
        names: dict[str, None] = {}
        for row in rows:
            for key in row:
                names.setdefault(key, None)
        for key in self.required:
            names.setdefault(key, None)
        with file_lock(lock_path(self.path)):
            fresh = _meta(zarr.open_group(str(self.path), mode="r"), self.path)
            if fresh is None or int(fresh["rows"]) != self.rows or len(fresh["columns"]) != len(self.columns):
                self._load()  # another process appended since we last looked
            cols = {}
            for name in names:
                values = [row.get(name) for row in rows]
                kind = self.columns.get(name) or infer_kind(values)
                check_column_name(name, where)
                cols[name] = (kind, coerce_column(values, kind, name, where, name in self.required))
            for name, (kind, _) in cols.items():
                if name not in self.columns:
                    self._add_column(name, kind)
            n = len(rows)
            for name, kind in self.columns.items():
                data = cols[name][1] if name in cols else np.full(n, _FILL[kind], dtype=_DTYPE[kind])
                self._arrays[name].append(data)
            self.rows += n
            self._commit()  # readers see the new rows only from here on
        return self.rows


# ----------------------------------------------------------------------------- reader
def empty_frame(base: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({n: _series(np.zeros(0, dtype=object if k == "str" else _DTYPE[k]), k)
                         for n, k in base.items()})


def _series(values: np.ndarray, kind: str) -> pd.Series:
    if kind == "str":
        return pd.Series(np.asarray(values, dtype=object)).astype("str")
    return pd.Series(np.asarray(values, dtype=_DTYPE[kind]))


class CorruptStoreError(ValueError):
    """A table store whose metadata cannot be read at all (the message names the file)."""


# What reading damaged bytes raises through zarr 3 and numcodecs: RuntimeError from a codec
# (zstd, blosc, the crc32c check), ValueError for bad JSON / UTF-8 / metadata (zarr's errors are
# ValueErrors), TypeError / KeyError / IndexError for metadata of the wrong shape, OSError from the
# file system. Seen by corrupting stores file by file (truncated, flipped, emptied, replaced, removed).
DAMAGED = (RuntimeError, ValueError, TypeError, KeyError, IndexError, OSError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _has(group, name: str) -> bool:
    try:
        return name in group
    except DAMAGED:  # its metadata is garbage: it exists; _read_column reports it
        return True


def _read_column(group, name: str, n: int, kind: str, where: Path) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Column `name`'s first `n` values, salvaging what can be read.

    Returns (values, bad_rows, problem): `bad_rows` marks rows of unreadable chunks (None if all
    read), which hold the fill value (NaN / ""); `problem` is one line naming the store, the column
    and the chunks, else None. One bad chunk must not cost the whole table (or the whole run)."""
    dtype = object if kind == "str" else _DTYPE[kind]
    try:
        arr = group[name]
        return np.asarray(arr[:n]), None, None
    except DAMAGED as exc:  # corrupt chunk or array metadata: salvage chunk by chunk
        first = exc
    values = np.full(n, _FILL[kind], dtype=dtype)
    bad = np.zeros(n, dtype=bool)
    try:
        arr = group[name]
        step = int(arr.chunks[0]) or n
    except DAMAGED:  # the array's own zarr.json is gone or garbage
        bad[:] = True
        return values, bad, f"{where}/{name}: column unreadable ({_one_line(first)})"
    bad_chunks = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        try:
            values[start:stop] = arr[start:stop]
        except DAMAGED:  # this chunk is damaged: its rows are lost
            bad[start:stop] = True
            bad_chunks.append(start // step)
    if not bad_chunks:  # the first failure was transient (e.g. a file replaced mid-read)
        return values, None, None
    return values, bad, (f"{where}/{name}: chunk(s) {bad_chunks} unreadable ({_one_line(first)}); "
                         f"{int(bad.sum())} of {n} rows of this column are lost")


def read_table(path: Path, base: Mapping[str, str], columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Committed rows of a table as a DataFrame (in write order); empty with `base` columns if none.
    `columns`: read only these (unknown names are an error), for cheap reads of long runs.

    A column with unreadable chunks is served with those rows missing (NaN / ""; for integer
    columns, which cannot hold a gap, those rows are dropped from the table) and one line per
    damaged column is both warned (RuntimeWarning) and listed in ``df.attrs["runstore_warnings"]``,
    so a caller can show the damage. Unreadable store metadata raises CorruptStoreError naming it."""
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except FileNotFoundError:
        return empty_frame(base)
    except DAMAGED as exc:  # garbage zarr.json: name the file, not the JSON parser
        raise CorruptStoreError(f"{path / 'zarr.json'}: unreadable zarr store metadata ({_one_line(exc)})") from None
    try:
        meta = _meta(group, path)
    except StoreFormatError:
        raise
    except DAMAGED as exc:  # attributes of any shape: name the file, not the parser
        raise CorruptStoreError(f"{path / 'zarr.json'}: unreadable table metadata ({_one_line(exc)})") from None
    if meta is None:
        return empty_frame(base)
    n = int(meta["rows"])
    kinds = {str(name): str(kind) for name, kind in meta["columns"]}
    for name, kind in base.items():  # a store written before a base column existed
        kinds.setdefault(name, kind)
    order = list(base) + [c for c in kinds if c not in base]
    if columns is not None:
        columns = list(columns)
        unknown = [c for c in columns if c not in kinds]
        if unknown:
            raise KeyError(f"{path}: no column(s) {unknown}; columns are {order}")
        order = [c for c in order if c in columns]
    data, problems = {}, []
    drop = np.zeros(n, dtype=bool)
    for name in order:
        kind = kinds[name]
        if _has(group, name):
            values, bad, problem = _read_column(group, name, n, kind, path)
            if problem:
                problems.append(problem)
                if kind == "int64":
                    drop |= bad
            data[name] = _series(values, kind)
        else:
            data[name] = _series(np.full(n, _FILL[kind], dtype=object if kind == "str" else _DTYPE[kind]), kind)
    df = pd.DataFrame(data, columns=order)
    if drop.any():
        df = df[~drop].reset_index(drop=True)
    for problem in problems:
        warnings.warn(problem, RuntimeWarning, stacklevel=2)
    df.attrs["runstore_warnings"] = problems
    return df
