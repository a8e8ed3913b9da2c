"""Former home of the small-file helpers, now in `common` (one home per mechanism, issue 13).

Kept only as a re-export for callers not yet switched (pipeline/sources.py imports `file_lock`
from here); new code imports `common.files`, `common.locks`, `common.serialize` directly.
"""
from common.files import write_atomic
from common.locks import LockedError, exclusive_lock, file_lock, sweep_stale_temps
from common.serialize import dump_json, dump_yaml, load_json, load_yaml, plain
from common.values import finite_or_none

__all__ = ["write_atomic", "LockedError", "exclusive_lock", "file_lock", "sweep_stale_temps",
           "dump_json", "dump_yaml", "load_json", "load_yaml", "plain", "finite_or_none"]
