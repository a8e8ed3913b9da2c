"""runstore: one training run as a directory, and the only code that touches its zarr stores.

    run_dir/
      config.yaml        resolved config (atomic writes)
      status.json        state + heartbeat (atomic writes)
      checkpoints/       checkpoint files (the trainer's) + index.json (ours)
      metrics.zarr       per-step table: step, epoch, loss, lr, images_per_s, data_wait, time, extras
      evals.zarr         per-eval table: epoch, kind, top1, top5, loss, seconds, settings, time, extras
      recons.zarr        per (split, epoch): uint8 images, mask, per-image loss, image ids

Write with `create(run_dir, config)`, read with `open(run_dir)` / `list_runs(root)`; readers see
only committed data, so they work while a trainer writes and after it is killed.
"""
from common.files import write_atomic
from common.locks import LockedError, exclusive_lock, sweep_stale_temps

from .reader import Run, is_run_dir, list_runs, open
from .status import STALE, STALE_AFTER_S, STATES
from .summary import dataset_name, planned_epochs, summarize
from .sweep import list_sweeps, log_sweep_point, points_done, sweep
from .table import StoreFormatError
from .layout import EVAL_COLUMNS, METRIC_COLUMNS
from .writer import RunExistsError, RunWriter, append_eval, create

log_eval = append_eval  # module-level: append an eval record to an existing run from any process

__all__ = [
    "create", "open", "list_runs", "is_run_dir", "Run", "RunWriter", "RunExistsError", "StoreFormatError",
    "append_eval", "log_eval", "METRIC_COLUMNS", "EVAL_COLUMNS", "STATES", "STALE", "STALE_AFTER_S",
    "log_sweep_point", "sweep", "points_done", "list_sweeps",
    "LockedError", "exclusive_lock", "sweep_stale_temps", "write_atomic", "summarize", "planned_epochs", "dataset_name",
]
