"""What a run directory holds: file names and the base columns of its tables (shared by the
writer and the reader, so neither imports the other for them)."""
from pathlib import Path

METRIC_COLUMNS = {"step": "int64", "epoch": "float64", "loss": "float64", "lr": "float64",
                  "images_per_s": "float64", "data_wait": "float64", "time": "float64"}
EVAL_COLUMNS = {"epoch": "int64", "kind": "str", "top1": "float64", "top5": "float64", "loss": "float64",
                "seconds": "float64", "settings": "str", "time": "float64"}
CHECKPOINT_INDEX = Path("checkpoints") / "index.json"
