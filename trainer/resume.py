"""What a resume may change, and where in the epoch it continues.

A checkpoint records its position as micro-batches done in the epoch (``batch_in_epoch``) and as
samples done (``samples_in_epoch``). The loaders cut one (seed, epoch) permutation into global
steps of ``batch x accum x world`` consecutive samples (ranks interleaved inside a step, see
``pipeline.loaders.base``), and the masking noise of a step is a function of (seed, step) indexed by
the position inside the global batch (``trainer.noise``). So when the global batch is unchanged, a
new split of it (per-process batch, accumulation, process count) sees exactly the same samples with
the same masks at every step: the resume continues at the exact sample, only the summation order of
the gradients differs.

Everything else that changes the weights' trajectory in a way a user might not mean is refused
(exit 4) with the keys named, unless ``--allow-change KEY`` names every one of them:
- the global batch (it sets the lr by the linear scaling rule and the steps per epoch; mid-epoch it
  also moves the position off a step boundary),
- the schedule: ``epochs``, ``budget_minutes``, ``optim.warmup_epochs``, ``optim.blr``, ``optim.lr``,
  ``optim.min_lr`` (the lr is a function of the fractional epoch and of these, so the rest of the run
  would follow a curve no fresh run has). The epochs a ``budget_minutes`` fixed are in the checkpoint
  and kept; an allowed change of ``epochs`` or ``budget_minutes`` drops them (``trainer.budget``).

``resume(run, request, allow)`` applies all of this: it finds the checkpoint (the newest good one in
``RUN/checkpoints``, or the file ``--resume CKPT`` names), refuses a changed model shape, loads
model, optimizer, scaler and RNG states, and returns the ``TrainState`` to continue from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint as ckpt
from .config import SHAPE_KEYS, ConfigError, diff_configs, flatten, with_defaults
from .optim import scaled_lr
from common.schedule import set_lr

SCHEDULE_KEYS = ("epochs", "budget_minutes", "optim.warmup_epochs", "optim.blr", "optim.lr", "optim.min_lr")
LAYOUT_KEYS = ("data.batch_size", "optim.accum_steps", "world_size")  # world_size: processes, not a config key
ALLOWABLE = SCHEDULE_KEYS + LAYOUT_KEYS


class ResumeError(RuntimeError):
    """The checkpoint cannot be continued as asked (exit 4)."""


@dataclass
class TrainState:
    """Where training is: what a checkpoint stores besides the weights, and what a resume restores."""
    epoch: int = 0  # the epoch to continue in (0-based)
    step: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # micro-batches of this rank done in ``epoch``
    nonfinite_skips: int = 0
    config_changes: list = field(default_factory=list)  # [{key, old, new, harmless, at_step}] of earlier resumes
    budget_epochs: int | None = None  # the epochs budget_minutes fixed (None: not fixed, train cfg.epochs)
    resumed_from: Path | None = None  # the checkpoint it was loaded from; None for a fresh run
    start_step: int = 0  # the step this process started at


@dataclass
class Position:
    batch_in_epoch: int  # micro-batches of this rank already done in the epoch, in the new layout
    notes: list[str]  # what the trainer should say about the resume


def parse_allow(values) -> set[str]:
    """``--allow-change`` values (repeatable, comma-separated) -> keys; unknown keys are an error."""
    keys = {k.strip() for v in values or () for k in str(v).split(",") if k.strip()}
    if "all" in keys:
        return set(ALLOWABLE)
    unknown = sorted(keys - set(ALLOWABLE))
    if unknown:
        raise ConfigError(f"--allow-change: unknown key '{unknown[0]}'; keys a resume can be allowed to change: "
                          f"{', '.join(ALLOWABLE)} (or all)")
    return keys


def _refuse(path, what: str, keys: list[str]) -> ResumeError:
    return ResumeError(f"cannot resume from {path}: {what}. Restore the original value"
                       f"{'s' if len(keys) > 1 else ''}, start a new run directory, or pass "
                       f"--allow-change {','.join(keys)} to continue anyway")


def plan(state: dict, new_config: dict, world_size: int, path, allow=frozenset()) -> Position:
    """Check what changed since the checkpoint ``state`` and where the epoch continues.

    Raises ResumeError naming the keys of a refused change; returns the position in the new layout."""
    old = flatten(state.get("config") or {})
    new = flatten(new_config)
    B, A, W = new["data.batch_size"], new["optim.accum_steps"], world_size
    if not old:  # not one of our checkpoints' full records (an old format): nothing to compare
        return Position(int(state.get("batch_in_epoch", 0)), [])
    old_B, old_A = old.get("data.batch_size", B), old.get("optim.accum_steps", A)
    old_W = int(state.get("world_size", W))
    notes: list[str] = []

    schedule = [k for k in SCHEDULE_KEYS if k in old and old[k] != new.get(k)]
    refused = [k for k in schedule if k not in allow]
    if refused:
        what = ", ".join(f"{k} {old[k]!r} -> {new.get(k)!r}" for k in refused)
        raise _refuse(path, f"the lr schedule would change ({what}; the rest of the run would follow a curve "
                            f"no fresh run has)", refused)
    for k in schedule:
        notes.append(f"resume: allowed schedule change {k} {old[k]!r} -> {new.get(k)!r}")

    old_layout = {"data.batch_size": old_B, "optim.accum_steps": old_A, "world_size": old_W}
    new_layout = {"data.batch_size": B, "optim.accum_steps": A, "world_size": W}
    layout = [k for k in LAYOUT_KEYS if old_layout[k] != new_layout[k]]
    old_eff = int(state.get("effective_batch") or old_B * old_A * old_W)
    new_eff = B * A * W
    batch_in_epoch = int(state.get("batch_in_epoch", 0))
    samples = int(state.get("samples_in_epoch", batch_in_epoch * old_B * old_W))
    steps_done = samples // new_eff
    repeated = samples - steps_done * new_eff
    shown = ", ".join(f"{k} {old_layout[k]} -> {new_layout[k]}" for k in layout)
    if old_eff != new_eff:
        lr_old = old.get("optim.lr") or scaled_lr(old.get("optim.blr", 0.0), old_eff)
        lr_new = new.get("optim.lr") or scaled_lr(new.get("optim.blr", 0.0), new_eff)
        change = (f"the effective batch changes {old_eff} -> {new_eff} ({shown}): lr {lr_old:.3g} -> {lr_new:.3g} "
                  f"and the steps per epoch change"
                  + (f"; mid-epoch, {repeated} of the {samples} samples done in this epoch would be seen twice"
                     if repeated else ""))
        refused = [k for k in layout if k not in allow]
        if refused:
            raise _refuse(path, change + f". Keep data.batch_size x optim.accum_steps x processes = {old_eff}",
                          refused)
        notes.append(f"resume: allowed change: {change}; continuing at step {steps_done} of the epoch")
    elif layout and samples:
        notes.append(f"resume: batch layout changed ({shown}), same effective batch {new_eff}: continuing "
                     f"at sample {samples} of the epoch (step {steps_done}), the same samples and masks per step")
    return Position(steps_done * A, notes)


def check_same_shape(saved: dict, model, path, new_config: dict) -> None:
    """Refuse to resume into a model whose parameter shapes differ from the checkpoint's."""
    own = model.state_dict()
    theirs = saved["model"]
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in theirs.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems += [f"{k}: only in checkpoint" for k in theirs if k not in own]
    problems += [f"{k}: only in model" for k in own if k not in theirs]
    if problems:
        old, new = flatten(saved.get("config", {})), flatten(new_config)
        changed = [k for k in SHAPE_KEYS if k in old and old.get(k) != new.get(k)]
        raise ResumeError(
            f"cannot resume from {path}: the model shape changed"
            + (f" (config keys {', '.join(changed)})" if changed else "")
            + ". Differences: " + "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
            + ". Start a new run directory, or restore the original model settings.")


def find_checkpoint(ckpt_dir: Path, request: str | bool, say) -> tuple[dict, Path] | None:
    """(state, path) to resume from: the file ``--resume CKPT`` names, else the newest good
    checkpoint in ``ckpt_dir``; None when there is none (a fresh run)."""
    if isinstance(request, str):
        return ckpt.load_file(request), Path(request)
    if ckpt.list_checkpoints(ckpt_dir):
        problems: list = []
        loaded = ckpt.load_latest(ckpt_dir, problems=problems)
        if loaded is None:
            raise ResumeError(f"{ckpt_dir}: checkpoints exist but none can be resumed from: "
                              + "; ".join(f"{p.name}: {why}" for p, why in problems))
        return loaded
    if request:
        say(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")
    return None


def _kept_budget_epochs(saved: dict, new_config: dict, path, say) -> int | None:
    """The epochs an earlier ``budget_minutes`` fixed, if the budget and ``epochs`` are unchanged."""
    fixed = saved.get("budget_epochs")
    if fixed is None:
        return None
    if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1:
        raise ResumeError(f"cannot resume from {path}: its 'budget_epochs' is {fixed!r}, not a positive "
                          f"number of epochs (a damaged or hand-edited checkpoint)")
    old, new = flatten(with_defaults(saved.get("config") or {})), flatten(new_config)
    if all(old.get(k) == new.get(k) for k in ("epochs", "budget_minutes")):
        return int(fixed)
    say(f"resume: the {int(fixed)} epochs budget_minutes={old.get('budget_minutes')} fixed are dropped: "
        + ("a new budget counts from this resume" if new.get("budget_minutes") else
           f"training epochs={new.get('epochs')}"))
    return None


def resume(run, request: str | bool = False, allow=frozenset()) -> TrainState:
    """The state to continue from: fresh, or loaded from a checkpoint into ``run``'s model,
    optimizer and scaler (and this rank's RNGs). ``request``: ``--resume`` (True, or a CKPT path).
    Raises ResumeError (exit 4) for a changed model shape or a refused change (:func:`plan`)."""
    cfg, info = run.cfg, run.info
    loaded = find_checkpoint(run.ckpt_dir, request, run.say)
    if loaded is None:
        return TrainState()
    saved, path = loaded
    new_config = cfg.to_dict()
    check_same_shape(saved, run.raw_model, path, new_config)
    # refuses (exit 4) a changed schedule or global batch unless allowed; the position in the epoch
    # is recomputed for the new layout (same global batch: the exact sample)
    position = plan(saved, new_config, info.world_size, path, allow)
    run.raw_model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    set_lr(run.optimizer, run.base_lr)  # the schedule rewrites it every step anyway
    if saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    state = TrainState(epoch=saved["epoch"], step=saved["step"], batch_in_epoch=position.batch_in_epoch,
                       nonfinite_skips=saved.get("nonfinite_skips", 0), resumed_from=path, start_step=saved["step"],
                       budget_epochs=_kept_budget_epochs(saved, new_config, path, run.say))
    for note in position.notes:
        run.say(note)
    rngs = saved.get("rng", [])
    if len(rngs) == info.world_size:
        ckpt.set_rng_state(rngs[info.rank], info.device)
    else:
        run.say(f"warning: checkpoint has RNG states for {len(rngs)} ranks, running {info.world_size}; reseeding")
    new = [dict(c, at_step=state.step) for c in diff_configs(with_defaults(saved.get("config", {})), new_config)]
    for c in new:
        run.say(f"resume: config '{c['key']}' changed {c['old']!r} -> {c['new']!r}"
                + ("" if c["harmless"] else "  (affects the training trajectory)"))
    state.config_changes = list(saved.get("config_changes", [])) + new
    run.say(f"resumed from {path} at epoch {state.epoch}, step {state.step}, "
            f"batch {state.batch_in_epoch}/{len(run.loader)}")
    return state
