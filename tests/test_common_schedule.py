"""One lr schedule and one launch join for the trainer and the eval CLIs (issue 13)."""
import itertools
import math

import pytest
import torch

from common.distributed import init, pick_device
from common.schedule import lr_at
from evals.common import init_distributed, warmup_cosine


def _evals_formula_before(it, total, warmup, base_lr, min_lr=0.0):
    """evals.common.warmup_cosine as it was before it became common.schedule.lr_at."""
    if it < warmup:
        return base_lr * it / max(warmup, 1e-12)
    progress = (it - warmup) / max(total - warmup, 1e-12)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def test_eval_schedule_is_the_trainers_bit_for_bit():
    for total, warmup, base, low in itertools.product([1, 7, 1000.5], [0, 5, 2000], [0.1, 1.5e-3], [0.0, 1e-6]):
        for it in (x * total / 37 for x in range(45)):
            want = _evals_formula_before(it, total, warmup, base, low)
            assert warmup_cosine(it, total, warmup, base, low) == want
            assert lr_at(it, lr=base, min_lr=low, warmup_epochs=warmup, epochs=total) == want


def test_device_names_of_both_callers(monkeypatch):
    assert pick_device("cpu", 0) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto", 3) == torch.device("cpu")
        for name in ("cuda", "cuda:1"):  # the trainer's name and the eval CLIs' indexed one
            with pytest.raises(RuntimeError, match=f"device={name} was requested but CUDA is not available"):
                pick_device(name, 0)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    info = init("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert init_distributed("cpu") == (torch.device("cpu"), 0, 1)
