"""Learning-rate schedule: linear warm-up, then half-cosine to ``min_lr`` (the MAE recipe's), and
``set_lr``: the one copy, used by the trainer (in fractional epochs) and the eval CLIs (in
iterations: the unit is the caller's, the same in all three arguments). Imports nothing.

A pure function of the fractional epoch (``epoch + step_in_epoch / steps_per_epoch``), evaluated
every optimizer step as in the MAE recipe. Being pure, it needs no state in the checkpoint: a
resumed run recomputes the same value from its position, and extending ``epochs`` on resume simply
stretches the cosine from that point on.
"""
from __future__ import annotations

import math


def lr_at(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at fractional ``epoch`` (0 <= epoch <= epochs)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, value: float) -> None:
    """Write one lr into every param group (groups may carry an ``lr_scale``, e.g. for fine-tuning)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
