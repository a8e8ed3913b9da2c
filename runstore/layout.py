"""What a run directory holds: file names and the base columns of its tables (shared by the
writer and the reader, so neither imports the other for them), and the names of the checkpoint
files in ``RUN/checkpoints/`` (the trainer writes them, the reader, the eval CLIs and the trainer's
resume list them: one definition here, since runstore is the package every one of them may import).

Checkpoint names: ``ckpt-e{epoch:04d}-s{step:08d}.pth`` (pruned by the trainer) and
``milestone-e{epoch:04d}-s{step:08d}.pth`` (kept forever); ``final.pth`` is a link of the last one.
"""
from __future__ import annotations

import re
from pathlib import Path

METRIC_COLUMNS = {"step": "int64", "epoch": "float64", "loss": "float64", "lr": "float64",
                  "images_per_s": "float64", "data_wait": "float64", "time": "float64"}
EVAL_COLUMNS = {"epoch": "int64", "kind": "str", "top1": "float64", "top5": "float64", "loss": "float64",
                "seconds": "float64", "settings": "str", "time": "float64"}
CHECKPOINT_INDEX = Path("checkpoints") / "index.json"
CHECKPOINT_NAME_RE = re.compile(r"^(ckpt|milestone)-e(\d+)-s(\d+)\.pth$")


def checkpoint_name(epoch: int, step: int, kind: str = "ckpt") -> str:
    """The file name of a checkpoint (``kind`` "ckpt" or "milestone")."""
    return f"{kind}-e{epoch:04d}-s{step:08d}.pth"


def list_checkpoints(directory: str | Path) -> list[tuple[int, int, Path]]:
    """(step, epoch, path) of every checkpoint file in ``directory``, newest first (by the step in
    the name; at equal step the regular file before the milestone). No directory: []."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = CHECKPOINT_NAME_RE.match(p.name)
        if m:
            found.append((int(m.group(3)), int(m.group(2)), m.group(1) == "ckpt", p))
    found.sort(key=lambda t: (t[0], t[2]), reverse=True)
    return [(s, e, p) for s, e, _, p in found]
