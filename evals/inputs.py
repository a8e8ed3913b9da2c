"""What a user gave an eval CLI, checked before the expensive work.

Why its own module: the checks are the same for linprobe, kNN and fine-tuning, and a mistake found
after an hour of feature extraction (or, worse, a result computed on nothing and stored) costs
more than the check. The contract, as for every command of the project: a user mistake is one line
on stderr naming the flag or path and what would be valid, exit code 2, no traceback; a training
that diverged (fine-tuning's non-finite loss) is one line too, exit 3 as in the trainer; tracebacks
are for bugs. Light to import (no torch, nothing of the project), so `--help` stays quick.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3          # the trainer's code for the same failure (trainer.pretrain)


class UserError(ValueError):
    """A mistake in what the user passed (a path, a checkpoint, a size): one line, exit 2."""


class NonFiniteLoss(FloatingPointError):
    """Training diverged (a loss that is NaN or infinite): one line naming the step, exit 3."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in `--help` (argparse's ArgumentDefaultsHelpFormatter). Defaults that are None
    or a False flag are not printed: the option's own help says what leaving it out means."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter for a module docstring as description: its lines are kept as written."""


def _is_main_process() -> bool:
    # torchrun sets RANK before the process group exists: say things once, not once per process
    return os.environ.get("RANK", "0") == "0"


def warn(message: str) -> None:
    """A warning the user should see even with progress bars: stderr, prefixed, flushed."""
    if _is_main_process():
        print(f"[evals] warning: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    if _is_main_process():
        print(f"[evals] {message}", flush=True)


def cli(prog: str):
    """Decorate a CLI `main(argv) -> int` so a UserError becomes `PROG: error: MESSAGE`, exit 2,
    and a NonFiniteLoss the same line, exit 3. Under torchrun every process gets the same error
    (the same inputs; a non-finite loss is agreed on by all of them): rank 0 says it, the
    others exit with the same code silently."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None) -> int:
            try:
                return main(argv)
            except (UserError, NonFiniteLoss) as e:
                if _is_main_process():
                    print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
                return EXIT_NONFINITE if isinstance(e, NonFiniteLoss) else EXIT_USER_ERROR
        return run
    return wrap


# ----------------------------------------------------------------------------- data
def data_error(data, split: str, err: Exception) -> UserError:
    """A loader's complaint about one split, as a user error naming --data and the split."""
    text = " ".join(str(err).split()) or type(err).__name__
    return UserError(f"--data {data}: {split} split: {text}")


def open_split(data, split: str, make, *args, **kwargs):
    """Build a split's loader with `make(*args, **kwargs)`; a path the loaders refuse (missing,
    empty, no classes) is a UserError naming --data and the split."""
    try:
        return make(*args, **kwargs)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise data_error(data, split, e) from None


def layout_hint(root: Path) -> str:
    """What is in a --data folder that has no usable pair of splits, said as a hint."""
    have = [n for n in ("train.beton", "val.beton", "train", "val") if (root / n).exists()]
    if root.name in ("train", "val") and ((root.parent / "train").exists() or (root.parent / "val").exists()):
        return f"; {root} looks like one split: pass its parent {root.parent}"
    if have:
        return f"; it has only {', '.join(have)}: both splits are needed"
    return ""


def data_settings(data, spec, image_size: int, n_train: int, n_val: int) -> dict:
    """What an eval record was computed on, for its `settings`: the run store's views keep one
    record per (epoch, kind, settings), so evaluations on other data or at other sizes are kept
    beside each other instead of replacing each other."""
    return {"data": str(Path(data).expanduser().resolve()), "train_path": str(spec.train),
            "val_path": str(spec.val), "backend": spec.backend, "image_size": int(image_size),
            "n_train": int(n_train), "n_val": int(n_val)}


def check_same_classes(train_classes, val_classes, train_path, val_path) -> None:
    """Class index = position in the sorted class list, per split: if the lists differ, every
    val label would mean another class than in train and the accuracy would be silently wrong."""
    if train_classes is None or val_classes is None or list(train_classes) == list(val_classes):
        return
    only_train = sorted(set(train_classes) - set(val_classes))[:3]
    only_val = sorted(set(val_classes) - set(train_classes))[:3]
    raise UserError(f"the train split {train_path} has {len(train_classes)} classes and the val split "
                    f"{val_path} {len(val_classes)} (only in train: {only_train}, only in val: {only_val}); "
                    f"both splits need the same class folders (or labels)")


def count(n: int, what: str = "image") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def fit_batch(batch: int, num_samples: int, world: int, split_path, flag: str = "--batch-size",
              even: bool = False, minimum: int = 2) -> int:
    """The per-process batch a drop_last training loop can use on a split of `num_samples`.

    A batch larger than the split gives 0 steps per epoch with drop_last (the head would stay at
    its initialisation and its accuracy would be reported): shrink it to the split, with a
    warning. Fewer than `minimum` samples per process (BatchNorm, mixup pairs need 2) is an error.
    """
    if batch < 1:
        raise UserError(f"{flag} {batch}: must be at least 1")
    per_rank = num_samples // max(world, 1)
    if per_rank < minimum:
        where = f" per process ({world} processes)" if world > 1 else ""
        raise UserError(f"the train split {split_path} has {count(per_rank)}{where}: training needs at "
                        f"least {minimum} per process; use a larger train split")
    if batch <= per_rank:
        return batch
    new = per_rank - (per_rank % 2 if even else 0)
    where = " per process" if world > 1 else ""
    warn(f"{flag} {batch} is larger than the train split {split_path} ({count(per_rank)}{where}): "
         f"using {flag} {new} so every epoch takes a step (the lr follows: blr * batch / 256)")
    return new


def require_at_least_one(args: argparse.Namespace, *flags: str) -> None:
    """Each of these count flags (``--max-train`` is ``args.max_train``), when given, is at least 1."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")


def require_steps(steps: int, what: str) -> None:
    """Last guard before a result is stored: a head that took no optimiser step is its random
    initialisation, and its accuracy is not a measurement of the encoder."""
    if int(steps) <= 0:
        raise UserError(f"{what}: training took 0 steps (is the train split smaller than one batch?); "
                        f"the untrained head's accuracy is not stored")


# ----------------------------------------------------------------------------- resources
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def clamp_workers(n: int, flag: str = "--num-workers") -> int:
    """Loader worker processes beyond the CPUs only compete for them (and use memory each)."""
    if n < 0:
        raise UserError(f"{flag} {n}: must be 0 (load in the main process) or more")
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))     # torchrun: processes here
    cpus = max(1, available_cpus() // procs)
    if n > cpus:
        where = f" per process ({procs} processes on this machine)" if procs > 1 else ""
        warn(f"{flag} {n} is more than the {cpus} CPUs available{where}: using {flag} {cpus}")
        return cpus
    return n
