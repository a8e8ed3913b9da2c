"""MAE pretraining: one loop, readable top to bottom.

    python -m trainer.pretrain --config configs/demo.yaml [key=value ...] [--resume [CKPT]] [--run-dir DIR]
    torchrun --nproc_per_node=8 -m trainer.pretrain --config configs/imagenet_vit_b16_800.yaml

Exit codes (for schedulers):
    0   finished (or already finished)
    1   crashed (an exception; traceback printed, run status "crashed"; a full disk is one line)
    2   bad configuration, command line or input path, or the run directory is in use by another
        trainer (the message names its pid)
    3   non-finite loss or weights (message names step and epoch and the last good checkpoint, if
        any); with skip_nonfinite: weights not finite after a step, or more than
        skip_nonfinite_max_share of the steps skipped
    4   cannot resume (no usable checkpoint for --resume CKPT, the model shape changed, or a change of
        schedule or effective batch that ``--allow-change`` does not name; see ``trainer.resume``)
    75  preempted: SIGTERM or SIGUSR1 arrived, a checkpoint was saved, status is "preempted".
        75 is EX_TEMPFAIL from sysexits.h; requeue the job and it resumes where it stopped
        (e.g. Slurm: ``#SBATCH --signal=TERM@120`` and ``scontrol requeue`` on exit 75).
        Under torchrun the agent forwards SIGTERM to the workers and kills them if they have not
        exited within its grace period (about 30 s); a save cut short is harmless (atomic writes:
        the previous checkpoint stays), but give big models a longer warning time.

A run resumes automatically when ``RUN/checkpoints`` holds checkpoints (``--resume`` only makes that
explicit, or names a file). On CPU with ``deterministic: true`` the resumed run is bit-identical to
an uninterrupted one: the loader order and augmentation are functions of (seed, epoch, index), the
masking noise a function of (seed, step) (see ``trainer.noise``), and the checkpoint carries the
model, optimizer, scaler, position in the epoch and the RNG states of every rank. A resume with
another split of the same global batch (per-process batch, accumulation, processes) continues at
the exact sample; a changed global batch or lr schedule is refused unless ``--allow-change`` names
it (``trainer.resume``). One trainer owns a run directory at a time (``RUN/.lock``).

Reading order: ``train_one_epoch`` (set lr, forward/backward, non-finite check, step, log, save when
due) and ``end_epoch``; ``_train`` wires them: ``_prepare`` (checks, process group, lock, model,
data, optimiser) -> ``resume.resume`` (the ``TrainState`` to continue from) -> the run store and
wrappers -> ``_run_epochs`` (the epochs, and the status and exit code of each way a run ends).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import signal
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

import runstore
from common.locks import LockedError, exclusive_lock, sweep_stale_temps
from evals.online import epoch_evals, eval_seconds_estimate
from model import create_model, kwargs_from_config, param_counts
from pipeline import make_loader, to_model_input

from . import budget
from . import checkpoint as ckpt
from . import distributed, noise as masking_noise, preflight, recons
from . import resume as resume_rules
from .config import ConfigError, TrainConfig, flatten, from_dict, load_config
from .optim import build_optimizer, effective_batch, scaled_lr
from .resume import ResumeError, TrainState
from common.schedule import lr_at, set_lr

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_NONFINITE, EXIT_RESUME, EXIT_PREEMPTED = 0, 1, 2, 3, 4, 75


class NonFiniteLoss(RuntimeError):
    """The loss is not finite (or, with skip_nonfinite, the weights after a step are not): exit 3."""


class Preempted(Exception):
    """A stop signal was honoured: the checkpoint is saved, the run exits 75."""


# ----------------------------------------------------------------------------- small helpers

class StopSignal:
    """Set by SIGTERM / SIGUSR1; the loop finishes the current step, saves, and exits 75."""

    def __init__(self):
        self.signum = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __call__(self, signum, frame):
        self.signum = signum

    def install(self) -> StopSignal:
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self)
        return self


def _say(info, msg: str) -> None:
    if info.is_main:
        tqdm.write(msg, file=sys.stderr)


def _setup_runtime(cfg, device: torch.device) -> None:
    """Threads, determinism and fast-math switches, before any model is built."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _amp(cfg, device: torch.device):
    """(autocast context factory, dtype or None, GradScaler) for the chosen precision."""
    prec = cfg.precision
    if prec == "auto":
        prec = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[prec]
    scaler = torch.amp.GradScaler(device.type, enabled=prec == "fp16")
    if dtype is None:
        return contextlib.nullcontext, None, scaler
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), dtype, scaler


def model_kwargs(cfg) -> dict:
    """The keywords ``create_model(cfg.model.name, **kw)`` gets (``model.kwargs_from_config`` of the
    config as the run stores it: the model section's extra keys, the masking ratio, the image size
    and norm_pix_loss unless an explicit ``target`` replaces it)."""
    return kwargs_from_config(cfg.to_dict())


def build_model(cfg, device: torch.device):
    model = create_model(cfg.model.name, **model_kwargs(cfg)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loader(cfg, info, train: bool = True):
    return make_loader(cfg.data.backend, cfg.data.train_path, batch_size=cfg.data.batch_size,
                       image_size=cfg.data.image_size, train=train, num_workers=cfg.data.num_workers,
                       device=str(info.device), channels_last=cfg.channels_last, seed=cfg.seed,
                       rank=info.rank, world_size=info.world_size,
                       crop_scale=tuple(cfg.data.crop_scale),  # train only: eval loaders ignore it
                       **{"dtype": torch.uint8, **cfg.data.options})  # uint8 as the library made it


def model_input(images: torch.Tensor, cfg, info) -> torch.Tensor:
    """A loader's batch -> what the model takes: the one place (the step and the pca fit) where
    batches become model input. ``build_loader`` asks for uint8 batches as the library produced
    them; here, inside the step and on the consuming device, they are moved (non-blocking),
    converted and normalised once (pipeline.to_model_input; a float batch passes through)."""
    return to_model_input(images, info.device, channels_last=cfg.channels_last)


PCA_FIT_IMAGES = 4096  # images whose patches fit the pca target's basis (~260k patches at 64 px, 8-px patches)


def fit_pca_target(model, cfg, info, max_images: int = PCA_FIT_IMAGES) -> None:
    """Fit a ``target: pca`` model's PCA basis on training images, before the first step.

    The images come from an evaluation-mode loader over the training set (centre crops, no
    augmentation, no shuffling), so fitting draws no random numbers and leaves the training loader
    and every RNG untouched: a run is the same with or without it up to the basis. Under DDP every
    rank fits on its shard and rank 0's basis is broadcast, so all ranks train towards one target.
    On resume the basis comes from the checkpoint (it is in the model's buffers).
    """
    loader = build_loader(cfg, info, train=False)
    chunks, n = [], 0
    for images, _ in loader:
        chunks.append(model_input(images, cfg, info).float())
        n += images.shape[0]
        if n >= max_images:
            break
    imgs = torch.cat(chunks)[:max_images].to(info.device)
    explained = model.fit_pca_target(imgs)
    if info.enabled:
        for buf in (model.pca_mean, model.pca_components, model.pca_std):
            dist.broadcast(buf, src=0)
    _say(info, f"target pca: {model.pca_dims} whitened components fit on {imgs.shape[0]} training images "
               f"({explained:.1%} of the patch variance)")


# ----------------------------------------------------------------------------- one step

def forward_backward(model, batches, cfg, info, step: int, num_patches: int, amp_ctx, scaler):
    """Forward and backward over ``accum_steps`` micro-batches drawn from the iterator ``batches``.

    Returns (this rank's mean loss as a 0-d tensor, seconds spent waiting for batches). Gradients
    are left in ``.grad``; only the last micro-batch all-reduces them across ranks (DDP no_sync).
    """
    A, B, W = cfg.optim.accum_steps, cfg.data.batch_size, info.world_size
    noise = masking_noise.step_noise(cfg.seed, step, A * W * B, num_patches, info.device)
    wait, loss_sum = 0.0, torch.zeros((), device=info.device)
    for m in range(A):
        t0 = time.perf_counter()
        images, _ = next(batches)
        wait += time.perf_counter() - t0
        images = model_input(images, cfg, info)
        rows = masking_noise.micro_batch_rows(noise, m, A, info.rank, W, images.shape[0])
        sync = contextlib.nullcontext() if (m == A - 1 or not info.enabled) else model.no_sync()
        with sync:
            with amp_ctx():
                loss, _, _ = model(images, mask_ratio=cfg.model.mask_ratio, noise=rows)
            scaler.scale(loss / A).backward()
        loss_sum += loss.detach().float()
    return loss_sum / A, wait


def optimizer_step(optimizer, scaler, raw_model, clip_grad: float) -> None:
    """Unscale (fp16), clip if asked, step, and clear the gradients."""
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- one epoch

@dataclass
class Run:
    """The fixed pieces of one training run, built by ``_prepare``; the loop reads them."""
    cfg: TrainConfig
    info: distributed.DistInfo
    raw_model: torch.nn.Module  # what is saved, evaluated and visualised
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_ctx: Callable
    amp_dtype: torch.dtype | None
    loader: object
    steps_per_epoch: int
    eff_batch: int
    base_lr: float
    cpu_warning: str | None = None
    epochs: int = 0  # the epochs this run trains: cfg.epochs, or what budget_minutes fixed (trainer.budget)
    t_start: float = 0.0  # _train's start (perf_counter): what budget_minutes counts from
    last_eval_s: float = 0.0  # seconds the latest online evals took
    end_work_s: float = 0.0  # seconds the latest epoch end took besides evals (checkpoint, reconstructions)
    budget_watch: budget.Watch | None = None  # after the budget's decision, in the process that took it
    model: torch.nn.Module | None = None  # raw_model compiled and/or in DDP: what the step runs
    writer: runstore.RunWriter | None = None  # rank 0's run store
    recon_sets: list = field(default_factory=list)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.cfg.run_dir) / "checkpoints"

    def say(self, msg: str) -> None:
        _say(self.info, msg)

    def lr_at(self, epoch: int, it: int) -> float:
        """The schedule at step ``it`` of ``epoch`` (a pure function of the fractional epoch)."""
        o = self.cfg.optim
        return lr_at(epoch + it / self.steps_per_epoch, lr=self.base_lr, min_lr=o.min_lr,
                     warmup_epochs=o.warmup_epochs, epochs=self.epochs)


@dataclass
class EpochStats:
    """What the epoch line reports: the mean loss over the steps taken, throughput, data wait."""
    lr: float
    t0: float = field(default_factory=time.perf_counter)
    loss_sum: float = 0.0
    taken: int = 0  # steps with a finite loss: the epoch's mean loss is over these only
    steps: int = 0
    wait: float = 0.0
    clock: budget.EpochClock = field(default_factory=budget.EpochClock)  # steady step time, for budget_minutes


def train_one_epoch(run: Run, state: TrainState, saver: ckpt.Checkpointer, stop: StopSignal) -> tuple[bool, EpochStats]:
    """The optimizer steps from ``state``'s position to the end of its epoch.

    Mid-epoch it saves when a checkpoint is due, and on a stop signal saves and raises Preempted.
    Returns (a stop signal came during the last step: the epoch-end save is then the preemption
    one, the epoch's numbers)."""
    cfg, A = run.cfg, run.cfg.optim.accum_steps
    run.loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    batches = iter(run.loader)
    it = state.batch_in_epoch // A
    stats = EpochStats(lr=run.lr_at(state.epoch, it))
    bar = tqdm(total=run.steps_per_epoch, initial=it, desc=f"epoch {state.epoch + 1}/{run.epochs}",
               disable=not (run.info.is_main and cfg.log.progress), dynamic_ncols=True, leave=False)
    with bar:
        while it < run.steps_per_epoch:
            t0 = time.perf_counter()
            stats.lr = run.lr_at(state.epoch, it)
            set_lr(run.optimizer, stats.lr)
            loss, wait = forward_backward(run.model, batches, cfg, run.info, state.step,
                                          run.raw_model.num_patches, run.amp_ctx, run.scaler)
            state.batch_in_epoch += A
            loss_value = distributed.mean_scalar(run.info, loss).item()
            if math.isfinite(loss_value):
                optimizer_step(run.optimizer, run.scaler, run.raw_model, cfg.clip_grad)
                _check_weights(run, state, loss_value)
                stats.loss_sum, stats.taken = stats.loss_sum + loss_value, stats.taken + 1
            else:
                _skip_nonfinite(run, state, loss_value)
            state.step, it = state.step + 1, it + 1
            _log_step(run, state, stats, bar, loss_value, wait, time.perf_counter() - t0, it)
            stop_now, save_due = saver.poll(state.step, stop.requested)
            if it == run.steps_per_epoch:  # saved (if due) as (next epoch, batch 0) by end_epoch
                return stop_now, stats
            if stop_now or save_due:
                saver.save(state)
            if stop_now:
                raise Preempted()
    return False, stats


def _skip_nonfinite(run: Run, state: TrainState, loss_value: float) -> None:
    """A step whose loss is not finite: stop, or with skip_nonfinite skip it (within its share)."""
    cfg, where = run.cfg, f"step {state.step + 1}, epoch {state.epoch + 1}"
    run.optimizer.zero_grad(set_to_none=True)
    if not cfg.skip_nonfinite:
        raise NonFiniteLoss(f"non-finite loss ({loss_value}) at {where} (batch {state.batch_in_epoch}/"
                            f"{len(run.loader)}); stopping. {ckpt.good_checkpoint_note(run.ckpt_dir)}. "
                            f"Lower optim.blr, set clip_grad, or set skip_nonfinite: true")
    state.nonfinite_skips += 1
    if state.nonfinite_skips > max(1, int(cfg.skip_nonfinite_max_share * (state.step + 1))):
        raise NonFiniteLoss(f"{state.nonfinite_skips} of {state.step + 1} steps had a non-finite loss, more than "
                            f"skip_nonfinite_max_share={cfg.skip_nonfinite_max_share:g} allows; stopping at "
                            f"{where}. {ckpt.good_checkpoint_note(run.ckpt_dir)}. Lower optim.blr or set clip_grad")
    run.say(f"warning: non-finite loss at {where}: step skipped ({state.nonfinite_skips} so far)")


def _check_weights(run: Run, state: TrainState, loss_value: float) -> None:
    # a finite loss can still give an update that overflows the weights; skipping later steps
    # cannot undo it, so skip_nonfinite checks the weights after every step
    if run.cfg.skip_nonfinite and not ckpt.params_finite(run.raw_model):
        raise NonFiniteLoss(f"parameters are not finite after step {state.step + 1}, epoch {state.epoch + 1} "
                            f"(its loss was finite, {loss_value:.4g}; skip_nonfinite cannot undo an applied "
                            f"step); stopping. {ckpt.good_checkpoint_note(run.ckpt_dir)}. Lower optim.blr or "
                            f"set clip_grad")


def _log_step(run: Run, state: TrainState, stats: EpochStats, bar, loss_value: float, wait: float,
              dt: float, it: int) -> None:
    """The step's metrics row, progress bar and (on a CPU-only run of GPU-scale work) time estimate."""
    if run.cpu_warning and state.step - state.start_step == 2:  # the second step: past the warm-up
        run.say(preflight.step_time_note(dt, run.steps_per_epoch,
                                         run.epochs - state.epoch - it / run.steps_per_epoch))
    ips = run.eff_batch / dt
    stats.clock.tick()
    stats.steps, stats.wait = stats.steps + 1, stats.wait + wait
    if run.info.is_main:
        run.writer.log_metrics({"step": state.step, "epoch": state.epoch + it / run.steps_per_epoch,
                                "loss": loss_value, "lr": stats.lr, "images_per_s": ips, "data_wait": wait / dt})
        bar.set_postfix_str(f"loss {loss_value:.4f} lr {stats.lr:.2e} {ips:.0f} img/s wait {100 * wait / dt:.0f}%",
                            refresh=False)
        bar.update(1)


def end_epoch(run: Run, state: TrainState, saver: ckpt.Checkpointer, stats: EpochStats, stop_requested: bool) -> None:
    """After an epoch's last step: the epoch line, the budget's decision when due (before the
    checkpoint, which then carries it), the checkpoint (when due, or on a stop signal: then
    Preempted), then reconstructions and online evals."""
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    elapsed, skips = time.perf_counter() - stats.t0, state.nonfinite_skips
    mean = f"{stats.loss_sum / stats.taken:.4f}" if stats.taken else "n/a (every step skipped)"
    run.say(f"epoch {state.epoch}/{run.epochs}: loss {mean}, lr {stats.lr:.3g}, "
            f"{stats.steps * run.eff_batch / elapsed:.0f} img/s, data wait {100 * stats.wait / elapsed:.1f}%, "
            f"{elapsed:.1f}s" + (f", {skips} non-finite steps skipped" if skips else ""))
    _flush(run)
    if state.epoch < run.epochs:
        _budget_boundary(run, state, stats)
    t0, run.last_eval_s = time.perf_counter(), 0.0
    due, tags = saver.epoch_end(state.epoch)
    if due or stop_requested:
        saver.save(state, tags)
    if stop_requested:
        raise Preempted()
    epoch_end_work(run, state.epoch)
    run.end_work_s = time.perf_counter() - t0 - run.last_eval_s
    if run.budget_watch is not None:
        run.budget_watch.note_eval(run.last_eval_s)


def _flush(run: Run) -> None:
    if run.writer is not None:
        run.writer.flush()


def epoch_end_work(run: Run, done_epochs: int) -> None:
    """Reconstructions (every K epochs and after the last) and online evals (every E epochs and
    after the last) after ``done_epochs`` complete epochs, on rank 0 while the others wait."""
    cfg = run.cfg
    if run.recon_sets and (done_epochs % cfg.recons.every == 0 or done_epochs == run.epochs):
        recons.log(run.raw_model, run.recon_sets, run.writer, done_epochs, cfg.model.mask_ratio,
                   run.info.device, run.amp_ctx, cfg.recons.seed)
    if run.info.is_main and evals_due(run, done_epochs):
        _online_evals(run, done_epochs)
    distributed.barrier(run.info)


def evals_due(run: Run, done_epochs: int) -> bool:
    every = run.cfg.evals.every
    return bool(every) and (done_epochs % every == 0 or done_epochs == run.epochs)


def _online_evals(run: Run, epoch: int) -> None:
    t0 = time.perf_counter()
    run.raw_model.eval()
    cfg_dict = run.cfg.to_dict()
    for rec in epoch_evals(run.raw_model, cfg_dict["evals"], cfg_dict["data"], run.info.device):
        rec = dict(rec)
        rec.pop("epoch", None)
        run.writer.log_eval(epoch=epoch, **rec)
        run.say(f"eval epoch {epoch}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
    run.raw_model.train()
    run.writer.flush()
    run.last_eval_s = time.perf_counter() - t0
    run.say(f"evals took {run.last_eval_s:.1f}s")


# ----------------------------------------------------------------------------- the run

def train(cfg, resume: str | bool = False, allow_change=frozenset()) -> int:
    """Run (or resume) one training run; returns the exit code. Process-global switches it sets
    (threads, deterministic algorithms, signal handlers) are restored on return, so that it can
    also be called in-process (tests, notebooks)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)})
    try:
        with contextlib.ExitStack() as owned:  # the run directory's lock and run store, released on return
            return _train(cfg, resume, frozenset(allow_change), owned)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        for s, h in saved[2].items():
            signal.signal(s, h)


def _train(cfg, request: str | bool, allow_change: frozenset, owned: contextlib.ExitStack) -> int:
    t_start = time.perf_counter()
    run = _prepare(cfg, owned)
    run.t_start = t_start
    state = resume_rules.resume(run, request, allow_change)
    run.epochs = state.budget_epochs or cfg.epochs
    fresh = state.resumed_from is None
    if fresh and getattr(run.raw_model, "target", None) == "pca" and not bool(run.raw_model.pca_fitted):
        fit_pca_target(run.raw_model, cfg, run.info)
    # Signals are handled from before the run is marked "running": a SIGTERM during start-up (compile,
    # reconstructions, evals redone on resume) is honoured at the first epoch boundary of the loop.
    stop = StopSignal().install()
    run.writer = _open_run_store(run, state, request, owned)
    run.model = _wrap(run.raw_model, cfg, run.info)
    run.recon_sets = recons.prepare(cfg, run.raw_model.num_patches) if run.info.is_main and cfg.recons.every else []
    saver = ckpt.Checkpointer(run, saved_step=-1 if fresh else state.step)
    if fresh and run.recon_sets:
        recons.log(run.raw_model, run.recon_sets, run.writer, 0, cfg.model.mask_ratio, run.info.device,
                   run.amp_ctx, cfg.recons.seed)
    run.say(_describe(run, state))
    _redo_lost_evals(run, state)
    return _run_epochs(run, state, saver, stop)


def _run_epochs(run: Run, state: TrainState, saver: ckpt.Checkpointer, stop: StopSignal) -> int:
    """The epochs from ``state`` to ``run.epochs``; the run's final status and exit code."""
    writer = run.writer
    run.model.train()
    try:
        while state.epoch < run.epochs:
            (early_stop,) = distributed.any_flags(run.info, [stop.requested])  # before this epoch's first step
            if early_stop:
                if saver.unsaved(state.step):
                    saver.save(state)
                raise Preempted()
            stop_at_end, stats = train_one_epoch(run, state, saver, stop)
            end_epoch(run, state, saver, stats, stop_at_end)
        if saver.unsaved(state.step):
            saver.save(state, {"final"})
        if writer is not None:
            writer.flush()
            writer.set_status("finished", epoch=state.epoch, step=state.step, nonfinite_skips=state.nonfinite_skips,
                              **({"budget_epochs": state.budget_epochs} if state.budget_epochs else {}))
        run.say(f"done: {state.epoch} epochs, {state.step} steps. Run directory: {run.cfg.run_dir}")
        return EXIT_OK
    except Preempted:
        if writer is not None:
            writer.set_status("preempted", message=f"signal {stop.signum}", epoch=state.epoch, step=state.step)
        run.say(f"preempted by signal {stop.signum}: checkpoint saved at epoch {state.epoch}, step {state.step}; "
                f"exit {EXIT_PREEMPTED} (requeue to resume)")
        return EXIT_PREEMPTED
    except (NonFiniteLoss, ckpt.NonFiniteWeights) as e:
        if writer is not None:
            writer.set_status("crashed", message=str(e), epoch=state.epoch, step=state.step)
        run.say(f"error: {e}")
        return EXIT_NONFINITE
    except BaseException as exc:  # any other end (a bug, Ctrl-C, a full disk): recorded, then re-raised
        if writer is not None:
            with contextlib.suppress(Exception):  # a failing status write must not hide the real error
                writer.set_status("crashed", message=f"{type(exc).__name__}: {exc}", epoch=state.epoch, step=state.step)
        raise
    finally:
        if writer is not None:
            writer.close()
        distributed.cleanup(run.info)


def _budget_boundary(run: Run, state: TrainState, stats: EpochStats) -> None:
    """At an epoch boundary (before its checkpoint, which then carries the number): fix the epochs
    when the budget's decision is due, or after it check that they still fit (trainer.budget)."""
    if _budget_pending(run, state) and budget.due(
            done=state.epoch, warmup_epochs=run.cfg.optim.warmup_epochs,
            spent_share=(time.perf_counter() - run.t_start) / (60.0 * run.cfg.budget_minutes)):
        # one more epoch: its steady steps, plus the end work of the previous boundary (0 if none here)
        _apply_budget(run, state, (stats.clock.seconds_per_step() or 0.0) * run.steps_per_epoch + run.end_work_s)
    elif run.budget_watch is not None:
        _check_budget(run, state)


def _budget_pending(run: Run, state: TrainState) -> bool:
    """``budget_minutes`` is set and has not fixed the epochs yet (in this run or before a resume)."""
    return bool(run.cfg.budget_minutes) and state.budget_epochs is None


def _fix_epochs(run: Run, state: TrainState, epochs: int) -> int:
    """Rank 0's ``epochs`` on every rank, as the run's epochs (0 = no change), recorded in the state
    (the next checkpoint) and status.json; returns it."""
    epochs = distributed.broadcast_int(run.info, epochs)
    if epochs:
        run.epochs = state.budget_epochs = epochs
        if run.writer is not None:
            run.writer.set_status("running", epoch=state.epoch, step=state.step, budget_epochs=epochs)
    return epochs


def _check_budget(run: Run, state: TrainState) -> None:
    """Re-plan when the epochs since the decision ran at another speed than it assumed: shorter when
    the run would overrun the budget, longer when more epochs fit it (trainer.budget.replan); rank 0
    decides (0 = no change), every rank follows."""
    watch, cfg, epochs = run.budget_watch, run.cfg, 0
    if run.info.is_main:
        found = budget.replan(watch, now=time.perf_counter(), done=state.epoch, planned=run.epochs,
                              max_epochs=cfg.epochs, evals_every=cfg.evals.every)
        if found is not None:
            plan, epoch_s, projected = found
            epochs = plan.epochs
            cap = "" if epochs < run.epochs else f", at most {cfg.epochs}"
            evals = f", an eval ~{watch.eval_s:.0f}s" if cfg.evals.every else ""
            run.say(f"budget {cfg.budget_minutes:g} min: the {state.epoch - watch.epoch0} epochs since the decision "
                    f"took {epoch_s:.1f}s each (planned {watch.epoch_s:.1f}s){evals}, so "
                    f"{run.epochs} epochs would end at {projected / 60:.1f} min: re-planned to {epochs} "
                    f"(estimated {plan.estimate_s / 60:.1f} min{cap}); "
                    f"the lr's cosine follows epochs={epochs} from here")
    _fix_epochs(run, state, epochs)


def _apply_budget(run: Run, state: TrainState, epoch_s: float) -> None:
    """Fix the epochs ``budget_minutes`` allows (trainer.budget), at the end of the warm-up (or once a
    quarter of the budget is spent): rank 0 times a few batches of the online evals and decides;
    every rank follows."""
    cfg, epochs, eval_s = run.cfg, 0, 0.0
    if run.info.is_main:
        d = cfg.to_dict()
        if cfg.evals.every:
            eval_s = budget.EVAL_MARGIN * eval_seconds_estimate(run.raw_model, d["evals"], d["data"], run.info.device)
        plan = budget.plan_epochs(
            budget_s=60.0 * cfg.budget_minutes, elapsed_s=time.perf_counter() - run.t_start, done=state.epoch,
            max_epochs=cfg.epochs, min_epochs=min(cfg.epochs, max(state.epoch + 1, math.ceil(cfg.optim.warmup_epochs))),
            epoch_s=epoch_s, eval_s=eval_s, evals_every=cfg.evals.every)
        epochs = plan.epochs
        counted = "from the trainer's start" if state.resumed_from is None else "counted from this resume"
        run.say(budget.describe(plan, cfg.budget_minutes, cfg.epochs, epoch_s, eval_s,
                                budget.evals_between(state.epoch, plan.epochs, cfg.evals.every), counted))
        if cfg.optim.warmup_epochs < state.epoch and epochs != run.epochs:
            run.say(f"note: the lr of the first {state.epoch} epochs followed epochs={run.epochs} past the warm-up; "
                    f"from here the cosine follows epochs={epochs}")
    _fix_epochs(run, state, epochs)  # at least state.epoch + 1: never 0
    run.budget_watch = budget.Watch(budget_s=60.0 * cfg.budget_minutes, t_start=run.t_start,
                                    t0=time.perf_counter(), epoch0=state.epoch, epoch_s=epoch_s, eval_s=eval_s)


# ----------------------------------------------------------------------------- start-up

def _prepare(cfg, owned: contextlib.ExitStack) -> Run:
    """Everything before a checkpoint is read: input checks, the process group, the run directory's
    lock, runtime switches and seeds, the model, the data and the optimiser."""
    preflight.check_data_paths(cfg)  # before anything is created or loaded: a wrong path is exit 2 now
    info = distributed.init(cfg.device, cfg.dist_timeout_minutes)
    _own_run_dir(cfg, info, owned)
    _verify_data(cfg, info)
    if (note := preflight.clamp_workers(cfg)) is not None:
        _say(info, note)
    _setup_runtime(cfg, info.device)
    _seed(cfg.seed + info.rank)
    amp_ctx, amp_dtype, scaler = _amp(cfg, info.device)
    model = build_model(cfg, info.device)
    cpu_warning = preflight.cpu_scale_warning(cfg, sum(p.numel() for p in model.parameters())) \
        if info.device.type == "cpu" else None
    if cpu_warning:
        _say(info, cpu_warning)
    if info.device.type == "cpu" and (note := preflight.concurrent_training_warning(preflight.other_trainers())):
        _say(info, note)
    loader = _build_train_loader(cfg, info)
    A, B, W = cfg.optim.accum_steps, cfg.data.batch_size, info.world_size
    steps_per_epoch = len(loader) // A
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.data.train_path}: {len(loader)} batches of {B} per rank is less than one "
                          f"optimizer step (accum_steps={A}); lower data.batch_size or accum_steps")
    eff_batch = effective_batch(B, A, W)
    base_lr = cfg.optim.lr or scaled_lr(cfg.optim.blr, eff_batch)
    optimizer = build_optimizer(model, cfg.optim, base_lr, info.device)
    return Run(cfg, info, model, optimizer, scaler, amp_ctx, amp_dtype, loader, steps_per_epoch, eff_batch,
               base_lr, cpu_warning, epochs=cfg.epochs)


def _on_rank0(info, check: Callable[[], None], error: type[BaseException], elsewhere: Callable[[], BaseException]):
    """Run ``check`` on rank 0 only and stop every rank together if it raised ``error``: rank 0
    raises its own, the others ``elsewhere()`` (their messages are not printed: only rank 0 talks)."""
    problem = None
    if info.is_main:
        try:
            check()
        except error as e:
            problem = e
    (failed,) = distributed.any_flags(info, [problem is not None])
    if failed:
        raise problem if problem is not None else elsewhere()


def _own_run_dir(cfg, info, owned: contextlib.ExitStack) -> None:
    """One writer per run directory: rank 0 holds ``RUN/.lock`` (flock, released by the kernel if the
    process dies) for the trainer's whole life, so a second trainer on the same run stops at once
    (exit 2, naming the owner's pid) instead of interleaving metrics and overwriting checkpoints.
    Under the lock, temp files that a killed checkpoint write left behind are removed."""
    run_dir = Path(cfg.run_dir)

    def lock() -> None:
        owned.enter_context(exclusive_lock(run_dir / ".lock", run_dir))
        for p in sweep_stale_temps(run_dir / "checkpoints"):
            _say(info, f"removed {p.name}: left by a checkpoint write that was killed")
    _on_rank0(info, lock, LockedError, lambda: LockedError(run_dir, None))


def _verify_data(cfg, info) -> None:
    """``data.verify``: rank 0 checks the .beton files against their checksums (one full read each);
    a damaged one stops every rank before training (exit 2)."""
    _on_rank0(info, lambda: preflight.verify_data(cfg, functools.partial(_say, info)), preflight.DataError,
              lambda: preflight.DataError("rank 0 found a damaged input file (its message names it)"))


def _build_train_loader(cfg, info):
    try:
        return build_loader(cfg, info)
    except ValueError as e:  # the data source's own checks (pipeline.sources.SourceError, bad .beton)
        if type(e).__module__.startswith("pipeline") or str(cfg.data.train_path) in str(e):
            raise ConfigError(f"'data.train_path': {e}") from None
        raise


def _open_run_store(run: Run, state: TrainState, request: str | bool, owned: contextlib.ExitStack):
    """Rank 0's run store, marked "running" (None on other ranks). It is in the ExitStack: an error
    before the loop's own handlers (compile, reconstructions, evals redone on resume) marks the run
    "crashed" instead of leaving it "running"."""
    if not run.info.is_main:
        return None
    cfg = run.cfg
    try:
        writer = owned.enter_context(runstore.create(cfg.run_dir, cfg.to_dict(),
                                                     resume=state.resumed_from is not None or bool(request),
                                                     flush_rows=cfg.log.flush_every))
    except runstore.RunExistsError as e:
        raise ConfigError(f"{e} (or pass --resume)") from None
    writer.set_status("running", epoch=state.epoch, step=state.step)
    return writer


def _wrap(model, cfg, info):
    """What the step runs: ``model`` compiled if asked, in DDP under several processes
    (find_unused_parameters only for a model option that needs it, see wrap_ddp)."""
    if cfg.compile:
        model = torch.compile(model)
    if info.enabled:
        model = distributed.wrap_ddp(model, info)
    return model


def _describe(run: Run, state: TrainState) -> str:
    cfg, A, B, W = run.cfg, run.cfg.optim.accum_steps, run.cfg.data.batch_size, run.info.world_size
    return (f"run {cfg.run_dir}: {cfg.model.name}, {param_counts(run.raw_model)[1] / 1e6:.2f}M params, {W} "
            f"process(es) on {run.info.device.type}, precision {run.amp_dtype or torch.float32}, effective batch "
            f"{run.eff_batch} ({B} x {A} accum x {W}), lr {run.base_lr:.3g}, {run.steps_per_epoch} steps/epoch, "
            f"epochs {state.epoch}->{run.epochs}"
            + (f" (at most; budget_minutes={cfg.budget_minutes:g} fixes the number at the end of the warm-up)"
               if _budget_pending(run, state) and state.epoch < cfg.epochs else ""))


def _redo_lost_evals(run: Run, state: TrainState) -> None:
    """Epoch-end evals run after that epoch's checkpoint is saved; a run killed or preempted in
    between resumes at (epoch, batch 0) and redoes them here, so no eval epoch goes missing."""
    cfg = run.cfg
    if state.resumed_from is None or state.batch_in_epoch != 0 or state.epoch == 0:
        return
    missing = False
    if run.info.is_main and evals_due(run, state.epoch):
        done = run.writer.reader().evals()
        missing = done.empty or not (done["epoch"] == state.epoch).any()
    (missing,) = distributed.any_flags(run.info, [missing])
    if missing:
        run.say(f"resume: epoch {state.epoch}'s evals are missing from the run store; running them now")
        epoch_end_work(run, state.epoch)


# ----------------------------------------------------------------------------- CLI

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults inline, and the epilog (every config key's default) kept as written."""


def _config_defaults() -> str:
    """Every config key with its default, as the key=value overrides are written."""
    def value(v) -> str:  # as an override is typed: true/false, [0.9,0.95]
        return json.dumps(v, separators=(",", ":")) if isinstance(v, (bool, list, dict)) else str(v)
    items = [f"{k}={value(v)}" for k, v in flatten(TrainConfig().to_dict()).items()]
    return textwrap.fill("  ".join(items), width=100, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m trainer.pretrain",
        description="MAE pretraining. Reads a YAML preset, applies key=value overrides (e.g. "
                    "optim.blr=3e-4 data.batch_size=64 epochs=20), and trains into run_dir. A run directory "
                    "that already holds checkpoints is resumed automatically.",
        epilog="Config keys and their defaults (a preset overrides some; docs/INTERFACES.md describes them):\n"
               + _config_defaults() + "\n\n"
               "Writes: run_dir/ (config.yaml, status.json, metrics.zarr, evals.zarr, recons.zarr, checkpoints/,\n"
               "  .lock while it runs: one trainer per run directory).\n"
               "Exit codes: 0 done, 1 crashed, 2 bad config or input path or run directory in use,\n"
               "  3 non-finite loss or weights, 4 cannot resume (or a refused change: see --allow-change),\n"
               "  75 preempted by SIGTERM/SIGUSR1 after saving a checkpoint (requeue to resume).\n"
               "Multi-GPU: torchrun --nproc_per_node=N -m trainer.pretrain --config ...",
        formatter_class=_HelpFormatter)
    p.add_argument("--config", help="YAML preset (configs/*.yaml); defaults apply to keys it omits")
    p.add_argument("--run-dir", help="override run_dir (default: the config's run_dir)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="resume from the run directory's newest good checkpoint, or from CKPT")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY[,KEY]",
                   help="on resume, allow a change that is refused otherwise (exit 4): "
                        f"{', '.join(resume_rules.ALLOWABLE)}, or all. Same effective batch "
                        "(batch x accum x processes) needs nothing: it continues at the exact sample")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.blr=3e-4")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        # "--resume epochs=2": argparse gave the override to --resume's optional CKPT
        args.overrides.insert(0, args.resume)
        args.resume = True
    try:
        allow_change = resume_rules.parse_allow(args.allow_change)
        cfg = load_config(args.config, list(args.overrides))
        if args.run_dir:
            d = cfg.to_dict()
            d["run_dir"] = args.run_dir
            cfg = from_dict(d, "--run-dir")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return EXIT_OK
    try:
        return train(cfg, resume=args.resume, allow_change=allow_change)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (LockedError, preflight.DataError) as e:  # another trainer owns the run directory; damaged data
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (ResumeError, ckpt.CheckpointError) as e:
        print(f"resume error: {e}", file=sys.stderr)
        return EXIT_RESUME
    except ckpt.CheckpointWriteError as e:  # the disk, not a bug: one line, no traceback
        print(f"error: {e.strerror}", file=sys.stderr)
        return EXIT_CRASH
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug or an unexpected failure: the traceback is what a report needs
        traceback.print_exc()
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
