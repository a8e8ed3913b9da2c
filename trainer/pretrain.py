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
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed, noise as masking_noise, recons
from . import preflight
from . import resume as resume_rules
from .config import SHAPE_KEYS, ConfigError, diff_configs, flatten, from_dict, load_config
from .optim import build_optimizer, effective_batch, scaled_lr
from .schedule import lr_at, set_lr

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_NONFINITE, EXIT_RESUME, EXIT_PREEMPTED = 0, 1, 2, 3, 4, 75


class NonFiniteLoss(RuntimeError):
    pass


ResumeError = resume_rules.ResumeError


# ----------------------------------------------------------------------------- small helpers

class _Stop:
    """Set by SIGTERM / SIGUSR1; the loop finishes the current step, saves, and exits 75."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum

    def install(self):
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self)


def _say(info, msg: str) -> None:
    if info.is_main:
        from tqdm import tqdm
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
    """The keywords ``create_model(cfg.model.name, **kw)`` gets: the model section's extra keys, the
    masking ratio, the image size and norm_pix_loss (unless an explicit ``target`` replaces it)."""
    kwargs = dict(cfg.model.extra)
    kwargs.setdefault("mask_ratio", cfg.model.mask_ratio)
    if "target" not in kwargs:
        kwargs["norm_pix_loss"] = cfg.model.norm_pix_loss
    return {"img_size": cfg.data.image_size, **kwargs}


def build_model(cfg, device: torch.device):
    from model import create_model

    model = create_model(cfg.model.name, **model_kwargs(cfg)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loader(cfg, info, train: bool = True):
    from pipeline import make_loader

    return make_loader(cfg.data.backend, cfg.data.train_path, batch_size=cfg.data.batch_size,
                       image_size=cfg.data.image_size, train=train, num_workers=cfg.data.num_workers,
                       device=str(info.device), channels_last=cfg.channels_last, seed=cfg.seed,
                       rank=info.rank, world_size=info.world_size, **cfg.data.options)


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
        chunks.append(images.float())
        n += images.shape[0]
        if n >= max_images:
            break
    imgs = torch.cat(chunks)[:max_images].to(info.device)
    explained = model.fit_pca_target(imgs)
    if info.enabled:
        import torch.distributed as dist
        for buf in (model.pca_mean, model.pca_components, model.pca_std):
            dist.broadcast(buf, src=0)
    _say(info, f"target pca: {model.pca_dims} whitened components fit on {imgs.shape[0]} training images "
               f"({explained:.1%} of the patch variance)")


def _check_same_shape(saved: dict, model, path) -> None:
    """Refuse to resume into a model whose parameter shapes differ from the checkpoint's."""
    own = model.state_dict()
    theirs = saved["model"]
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in theirs.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems += [f"{k}: only in checkpoint" for k in theirs if k not in own]
    problems += [f"{k}: only in model" for k in own if k not in theirs]
    if problems:
        old = flatten(saved.get("config", {}))
        changed = [k for k in SHAPE_KEYS if k in old and old.get(k) != flatten(saved["_new_config"]).get(k)]
        raise ResumeError(
            f"cannot resume from {path}: the model shape changed"
            + (f" (config keys {', '.join(changed)})" if changed else "")
            + ". Differences: " + "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
            + ". Start a new run directory, or restore the original model settings.")


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


# ----------------------------------------------------------------------------- the run

def train(cfg, resume: str | bool = False, allow_change=frozenset()) -> int:
    """Run (or resume) one training run; returns the exit code. Process-global switches it sets
    (threads, deterministic algorithms, signal handlers) are restored on return, so that it can
    also be called in-process (tests, notebooks)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)})
    try:
        with contextlib.ExitStack() as owned:  # the run directory's lock, released on return
            return _train(cfg, resume, frozenset(allow_change), owned)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        for s, h in saved[2].items():
            signal.signal(s, h)


def _own_run_dir(cfg, info, owned: contextlib.ExitStack) -> None:
    """One writer per run directory: rank 0 holds ``RUN/.lock`` (flock, released by the kernel if the
    process dies) for the trainer's whole life, so a second trainer on the same run stops at once
    (exit 2, naming the owner's pid) instead of interleaving metrics and overwriting checkpoints.
    Under the lock, temp files that a killed checkpoint write left behind are removed."""
    import runstore
    error = None
    if info.is_main:
        run_dir = Path(cfg.run_dir)
        try:
            owned.enter_context(runstore.exclusive_lock(run_dir / ".lock", run_dir))
        except runstore.LockedError as e:
            error = e
        else:
            for p in runstore.sweep_stale_temps(run_dir / "checkpoints"):
                _say(info, f"removed {p.name}: left by a checkpoint write that was killed")
    (locked,) = distributed.any_flags(info, [error is not None])
    if locked:
        raise error if error is not None else runstore.LockedError(Path(cfg.run_dir), None)


def _params_finite(model) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _good_checkpoint(ckpt_dir: Path) -> str:
    """What a stopped run leaves to resume from, for exit-3 messages (saves refuse non-finite
    weights, so every checkpoint in the directory is a good one)."""
    found = ckpt.list_checkpoints(ckpt_dir)
    if not found:
        return "No checkpoint was saved yet: rerunning starts from scratch"
    s, e, p = found[0]
    return f"The last good checkpoint is {p} (epoch {e}, step {s}); rerunning the same command resumes from it"


def _train(cfg, resume: str | bool = False, allow_change=frozenset(),
           owned: contextlib.ExitStack | None = None) -> int:
    preflight.check_data_paths(cfg)  # before anything is created or loaded: a wrong path is exit 2 now
    info = distributed.init(cfg.device, cfg.dist_timeout_minutes)
    _own_run_dir(cfg, info, owned)
    if (note := preflight.clamp_workers(cfg)) is not None:
        _say(info, note)
    device = info.device
    _setup_runtime(cfg, device)
    torch.manual_seed(cfg.seed + info.rank)
    np.random.seed((cfg.seed + info.rank) % 2**32)
    random.seed(cfg.seed + info.rank)
    amp_ctx, amp_dtype, scaler = _amp(cfg, device)

    # -- model, data, optimiser ----------------------------------------------------------------
    model = build_model(cfg, device)
    cpu_warning = preflight.cpu_scale_warning(cfg, sum(p.numel() for p in model.parameters())) \
        if device.type == "cpu" else None
    if cpu_warning:
        _say(info, cpu_warning)
    try:
        loader = build_loader(cfg, info)
    except ValueError as e:  # the data source's own checks (pipeline.sources.SourceError, bad .beton)
        if type(e).__module__.startswith("pipeline") or str(cfg.data.train_path) in str(e):
            raise ConfigError(f"'data.train_path': {e}") from None
        raise
    A, B, W = cfg.optim.accum_steps, cfg.data.batch_size, info.world_size
    steps_per_epoch = len(loader) // A
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.data.train_path}: {len(loader)} batches of {B} per rank is less than one "
                          f"optimizer step (accum_steps={A}); lower data.batch_size or accum_steps")
    eff_batch = effective_batch(B, A, W)
    base_lr = cfg.optim.lr or scaled_lr(cfg.optim.blr, eff_batch)
    optimizer = build_optimizer(model, cfg.optim, base_lr, device)

    # -- resume ---------------------------------------------------------------------------------
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    epoch, step, batch_in_epoch, skips, changes = 0, 0, 0, 0, []
    loaded = None
    if isinstance(resume, str):
        loaded = (ckpt.load_file(resume), Path(resume))
    elif ckpt.list_checkpoints(ckpt_dir):
        problems: list = []
        loaded = ckpt.load_latest(ckpt_dir, problems=problems)
        if loaded is None:
            raise ResumeError(f"{ckpt_dir}: checkpoints exist but none can be resumed from: "
                              + "; ".join(f"{p.name}: {why}" for p, why in problems))
    elif resume:
        _say(info, f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")
    if loaded is not None:
        state, path = loaded
        state["_new_config"] = cfg.to_dict()
        _check_same_shape(state, model, path)
        # refuses (exit 4) a changed schedule or global batch unless allowed; the position in the epoch
        # is recomputed for the new layout (same global batch: the exact sample)
        position = resume_rules.plan(state, cfg.to_dict(), W, path, allow_change)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_lr(optimizer, base_lr)  # the schedule rewrites it every step anyway
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step, skips = state["epoch"], state["step"], state.get("nonfinite_skips", 0)
        batch_in_epoch = position.batch_in_epoch
        for note in position.notes:
            _say(info, note)
        rngs = state.get("rng", [])
        if len(rngs) == W:
            ckpt.set_rng_state(rngs[info.rank], device)
        else:
            _say(info, f"warning: checkpoint has RNG states for {len(rngs)} ranks, running {W}; reseeding")
        changes = list(state.get("config_changes", []))
        new = [dict(c, at_step=step) for c in diff_configs(state.get("config", {}), cfg.to_dict())]
        for c in new:
            _say(info, f"resume: config '{c['key']}' changed {c['old']!r} -> {c['new']!r}"
                       + ("" if c["harmless"] else "  (affects the training trajectory)"))
        changes += new
        _say(info, f"resumed from {path} at epoch {epoch}, step {step}, batch {batch_in_epoch}/{len(loader)}")
        del state

    if loaded is None and getattr(model, "target", None) == "pca" and not bool(model.pca_fitted):
        fit_pca_target(model, cfg, info)

    # Signals are handled from before the run is marked "running": a SIGTERM during start-up (compile,
    # reconstructions, evals redone on resume) is honoured at the first epoch boundary of the loop.
    stop = _Stop()
    stop.install()
    writer = None
    if info.is_main:
        import runstore
        try:
            # in the ExitStack: an error before the loop's own handlers (compile, reconstructions,
            # evals redone on resume) marks the run "crashed" instead of leaving it "running"
            writer = owned.enter_context(runstore.create(cfg.run_dir, cfg.to_dict(),
                                                         resume=loaded is not None or bool(resume),
                                                         flush_rows=cfg.log.flush_every))
        except runstore.RunExistsError as e:
            raise ConfigError(f"{e} (or pass --resume)") from None
        writer.set_status("running", epoch=epoch, step=step)

    # -- wrappers: compile, DDP ------------------------------------------------------------------
    raw_model = model  # what we save, evaluate and visualise
    if cfg.compile:
        model = torch.compile(model)
    if info.enabled:  # find_unused_parameters only for a model option that needs it (see wrap_ddp)
        model = distributed.wrap_ddp(model, info)

    recon_sets = recons.prepare(cfg, raw_model.num_patches) if info.is_main and cfg.recons.every else []
    last_save_time = time.monotonic()
    last_saved_step = step if loaded is not None else -1

    def flush_metrics():
        if writer is not None:
            writer.flush()

    def save(tag: str | None = None) -> None:
        """Collective: gathers every rank's RNG state; rank 0 writes, prunes and records."""
        nonlocal last_save_time, last_saved_step
        if not _params_finite(raw_model):  # identical on every rank: all stop together
            raise NonFiniteLoss(f"parameters are not finite at step {step}, epoch {epoch + 1}: not saving them "
                                f"as a checkpoint; stopping. {_good_checkpoint(ckpt_dir)}. Lower optim.blr "
                                f"or set clip_grad")
        rng = distributed.gather_objects(info, ckpt.rng_state(device))
        if info.is_main:
            flush_metrics()
            state = {
                "model": raw_model.state_dict(), "model_config": raw_model.config,
                "model_name": cfg.model.name, "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                "batch_in_epoch": batch_in_epoch, "samples_in_epoch": batch_in_epoch * B * W,
                "batches_per_epoch": len(loader), "rng": rng, "config": cfg.to_dict(),
                "config_changes": changes, "world_size": W, "effective_batch": eff_batch,
                "nonfinite_skips": skips, "format_version": ckpt.FORMAT_VERSION,
            }
            path = ckpt.save_atomic(state, ckpt_dir / ckpt.checkpoint_name(epoch, step))
            writer.add_checkpoint(str(path), epoch=epoch, step=step, tag=tag)
            if tag == "milestone":
                ckpt.add_milestone(path, epoch, step)
            if tag == "final":
                ckpt.link_as(path, "final.pth")
            ckpt.prune(ckpt_dir, cfg.checkpoint.keep_last)
        distributed.barrier(info)
        last_save_time, last_saved_step = time.monotonic(), step

    def epoch_end_work(done_epochs: int) -> None:
        """Reconstructions (every K epochs and after the last) and online evals (every E epochs)
        after ``done_epochs`` complete epochs, on rank 0 while the others wait."""
        if info.is_main and recon_sets and (done_epochs % cfg.recons.every == 0 or done_epochs == cfg.epochs):
            recons.log(raw_model, recon_sets, writer, done_epochs, cfg.model.mask_ratio, device, amp_ctx,
                       cfg.recons.seed)
        if info.is_main and cfg.evals.every and done_epochs % cfg.evals.every == 0:
            try:
                from evals.online import epoch_evals
            except ImportError as e:
                _say(info, f"online evals skipped (evals.online not importable: {e})")
            else:
                t0 = time.perf_counter()
                raw_model.eval()
                cfg_dict = cfg.to_dict()
                for rec in epoch_evals(raw_model, cfg_dict["evals"], cfg_dict["data"], device):
                    rec = dict(rec)
                    rec.pop("epoch", None)
                    writer.log_eval(epoch=done_epochs, **rec)
                    _say(info, f"eval epoch {done_epochs}: " + ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
                raw_model.train()
                writer.flush()
                _say(info, f"evals took {time.perf_counter() - t0:.1f}s")
        distributed.barrier(info)

    if loaded is None and info.is_main and recon_sets:
        recons.log(raw_model, recon_sets, writer, 0, cfg.model.mask_ratio, device, amp_ctx, cfg.recons.seed)

    _say(info, f"run {cfg.run_dir}: {cfg.model.name}, {sum(p.numel() for p in raw_model.parameters() if p.requires_grad)/1e6:.2f}M "
               f"params, {W} process(es) on {device.type}, precision {amp_dtype or torch.float32}, "
               f"effective batch {eff_batch} ({B} x {A} accum x {W}), lr {base_lr:.3g}, "
               f"{steps_per_epoch} steps/epoch, epochs {epoch}->{cfg.epochs}")

    # Epoch-end evals run after that epoch's checkpoint is saved; a run killed or preempted in
    # between resumes at (epoch, batch 0) and redoes them here, so no eval epoch goes missing.
    if loaded is not None and batch_in_epoch == 0 and epoch > 0:
        due = bool(cfg.evals.every) and epoch % cfg.evals.every == 0
        missing = False
        if info.is_main and due:
            done = writer.reader().evals()
            missing = done.empty or not (done["epoch"] == epoch).any()
        (missing,) = distributed.any_flags(info, [missing])
        if missing:
            _say(info, f"resume: epoch {epoch}'s evals are missing from the run store; running them now")
            epoch_end_work(epoch)

    # -- the loop ---------------------------------------------------------------------------------
    from tqdm import tqdm

    L = raw_model.num_patches
    first_step = step
    model.train()
    try:
        while epoch < cfg.epochs:
            # a signal that arrived before this epoch's first step (start-up, epoch-end evals)
            (early_stop,) = distributed.any_flags(info, [stop.signum is not None])
            if early_stop:
                if last_saved_step != step:
                    save()
                raise _Preempted()
            loader.set_epoch(epoch, start_batch=batch_in_epoch)
            batches = iter(loader)
            it = batch_in_epoch // A
            lr = lr_at(epoch + it / steps_per_epoch, lr=base_lr, min_lr=cfg.optim.min_lr,
                       warmup_epochs=cfg.optim.warmup_epochs, epochs=cfg.epochs)  # (for the epoch line)
            bar = tqdm(total=steps_per_epoch, initial=it, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (info.is_main and cfg.log.progress), dynamic_ncols=True, leave=False)
            ep_t0, ep_loss, ep_steps, ep_wait = time.perf_counter(), 0.0, 0, 0.0
            ep_taken = 0  # steps with a finite loss: the epoch's mean loss is over these only
            stop_after_epoch = False
            while it < steps_per_epoch:
                t0 = time.perf_counter()
                lr = lr_at(epoch + it / steps_per_epoch, lr=base_lr, min_lr=cfg.optim.min_lr,
                           warmup_epochs=cfg.optim.warmup_epochs, epochs=cfg.epochs)
                set_lr(optimizer, lr)
                loss, wait = forward_backward(model, batches, cfg, info, step, L, amp_ctx, scaler)
                batch_in_epoch += A
                loss_value = distributed.mean_scalar(info, loss).item()
                if not math.isfinite(loss_value):
                    optimizer.zero_grad(set_to_none=True)
                    if not cfg.skip_nonfinite:
                        raise NonFiniteLoss(f"non-finite loss ({loss_value}) at step {step + 1}, epoch {epoch + 1} "
                                            f"(batch {batch_in_epoch}/{len(loader)}); stopping. "
                                            f"{_good_checkpoint(ckpt_dir)}. Lower optim.blr, set clip_grad, "
                                            f"or set skip_nonfinite: true")
                    skips += 1
                    allowed = max(1, int(cfg.skip_nonfinite_max_share * (step + 1)))
                    if skips > allowed:
                        raise NonFiniteLoss(f"{skips} of {step + 1} steps had a non-finite loss, more than "
                                            f"skip_nonfinite_max_share={cfg.skip_nonfinite_max_share:g} allows; "
                                            f"stopping at step {step + 1}, epoch {epoch + 1}. "
                                            f"{_good_checkpoint(ckpt_dir)}. Lower optim.blr or set clip_grad")
                    _say(info, f"warning: non-finite loss at step {step + 1}, epoch {epoch + 1}: step skipped "
                               f"({skips} so far)")
                else:
                    optimizer_step(optimizer, scaler, raw_model, cfg.clip_grad)
                    # a finite loss can still give an update that overflows the weights; skipping later
                    # steps cannot undo it, so skip_nonfinite checks the weights after every step
                    if cfg.skip_nonfinite and not _params_finite(raw_model):
                        raise NonFiniteLoss(f"parameters are not finite after step {step + 1}, epoch {epoch + 1} "
                                            f"(its loss was finite, {loss_value:.4g}; skip_nonfinite cannot undo "
                                            f"an applied step); stopping. {_good_checkpoint(ckpt_dir)}. Lower "
                                            f"optim.blr or set clip_grad")
                    ep_loss, ep_taken = ep_loss + loss_value, ep_taken + 1
                step += 1
                it += 1

                dt = time.perf_counter() - t0
                if cpu_warning and step - first_step == 2:  # the second step: past the warm-up
                    _say(info, preflight.step_time_note(dt, steps_per_epoch, cfg.epochs - epoch - it / steps_per_epoch))
                ips = eff_batch / dt
                ep_steps, ep_wait = ep_steps + 1, ep_wait + wait
                if info.is_main:
                    writer.log_metrics({"step": step, "epoch": epoch + it / steps_per_epoch, "loss": loss_value,
                                        "lr": lr, "images_per_s": ips, "data_wait": wait / dt})
                    bar.set_postfix_str(f"loss {loss_value:.4f} lr {lr:.2e} {ips:.0f} img/s wait {100 * wait / dt:.0f}%",
                                        refresh=False)
                    bar.update(1)

                # save on signal, every K steps, every M minutes (decided together across ranks)
                end_of_epoch = it == steps_per_epoch
                want_stop, time_due = distributed.any_flags(info, [
                    stop.signum is not None,
                    bool(cfg.checkpoint.every_minutes)
                    and time.monotonic() - last_save_time > 60 * cfg.checkpoint.every_minutes])
                steps_due = bool(cfg.checkpoint.every_steps) and step % cfg.checkpoint.every_steps == 0
                if end_of_epoch:  # the position is saved as (next epoch, batch 0) below
                    stop_after_epoch = want_stop
                    break
                if want_stop or time_due or steps_due:
                    save()
                if want_stop:
                    raise _Preempted()
            bar.close()

            # -- end of epoch --
            epoch, batch_in_epoch = epoch + 1, 0
            elapsed = time.perf_counter() - ep_t0
            mean = f"{ep_loss / ep_taken:.4f}" if ep_taken else "n/a (every step skipped)"
            _say(info, f"epoch {epoch}/{cfg.epochs}: loss {mean}, lr {lr:.3g}, "
                       f"{ep_steps * eff_batch / elapsed:.0f} img/s, data wait {100 * ep_wait / elapsed:.1f}%, "
                       f"{elapsed:.1f}s" + (f", {skips} non-finite steps skipped" if skips else ""))
            flush_metrics()
            is_milestone = epoch in cfg.checkpoint.milestones
            tag = "milestone" if is_milestone else ("final" if epoch == cfg.epochs else None)
            if (cfg.checkpoint.every and epoch % cfg.checkpoint.every == 0) or tag or stop_after_epoch:
                save(tag=tag)
            if stop_after_epoch:
                raise _Preempted()
            epoch_end_work(epoch)
        if last_saved_step != step:
            save(tag="final")
        if writer is not None:
            flush_metrics()
            writer.set_status("finished", epoch=epoch, step=step, nonfinite_skips=skips)
        _say(info, f"done: {epoch} epochs, {step} steps. Run directory: {cfg.run_dir}")
        return EXIT_OK
    except _Preempted:
        if writer is not None:
            writer.set_status("preempted", message=f"signal {stop.signum}", epoch=epoch, step=step)
        _say(info, f"preempted by signal {stop.signum}: checkpoint saved at epoch {epoch}, step {step}; "
                   f"exit {EXIT_PREEMPTED} (requeue to resume)")
        return EXIT_PREEMPTED
    except NonFiniteLoss as e:
        if writer is not None:
            writer.set_status("crashed", message=str(e), epoch=epoch, step=step)
        _say(info, f"error: {e}")
        return EXIT_NONFINITE
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                exc = sys.exc_info()[1]
                writer.set_status("crashed", message=f"{type(exc).__name__}: {exc}", epoch=epoch, step=step)
        raise
    finally:
        if writer is not None:
            writer.close()
        distributed.cleanup(info)


class _Preempted(Exception):
    pass


# ----------------------------------------------------------------------------- CLI

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults inline, and the epilog (every config key's default) kept as written."""


def _config_defaults() -> str:
    """Every config key with its default, as the key=value overrides are written."""
    import textwrap
    from .config import TrainConfig
    import json

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
    return p.parse_args(argv)


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
        import yaml
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return EXIT_OK
    import runstore
    try:
        return train(cfg, resume=args.resume, allow_change=allow_change)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except runstore.LockedError as e:  # another trainer owns this run directory
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
    except Exception:
        traceback.print_exc()
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
