"""Checks before the work: input paths, damaged .beton files, worker count against the CPUs,
GPU-scale settings on a CPU.

Every mistake a user can make in a config should end the run at start, in one line naming the key
and what would be valid (a ``ConfigError``: exit 2), not hours later at the first eval as a crash;
so should a damaged input file (a ``DataError``: exit 2), not as a crash or, worse, silently wrong
images deep into a run.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.beton import sums_path, verified_stamp, verify_beton

from .config import ConfigError

# A CPU-only machine runs this preset comfortably (DESIGN.md's CPU scale).
CPU_PRESET = "configs/imagenette_cpu.yaml"
CPU_OVERRIDES = ("model.name=mae_vit_micro_patch8_64 data.image_size=64 precision=fp32 compile=false "
                 "data.batch_size=128 optim.accum_steps=1")
GPU_SCALE_PARAMS = 20_000_000  # above this, a model is GPU work (the CPU presets are ~2-6M)


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup cpusets), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def clamp_workers(cfg) -> str | None:
    """Lower ``data.num_workers`` to this process's share of the CPUs (FFCV / numba refuse more
    threads than CPUs, and extra torch workers only contend); returns the warning to print, or None.
    Under torchrun the node's CPUs are shared by its LOCAL_WORLD_SIZE processes."""
    cpus = available_cpus()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    share = max(1, cpus // local)
    if cfg.data.num_workers <= share:
        return None
    asked = cfg.data.num_workers
    cfg.data.num_workers = share
    whose = f"{cpus} CPU(s) this process may use" if local == 1 else \
        f"{share} CPU(s) per process ({cpus} shared by {local} processes on this node)"
    return (f"warning: data.num_workers={asked} is more than the {whose}: using {share} "
            f"(set data.num_workers={share} to silence this)")


def _path_problem(path: str, backend: str) -> str | None:
    p = Path(path)
    if backend == "ffcv":
        if not p.exists():
            return (f"{path} does not exist (backend ffcv reads a .beton file written by "
                    f"python -m pipeline.build_ffcv SRC OUT, e.g. OUT/train.beton)")
        if p.is_dir():
            return (f"{path} is a folder, but backend ffcv reads a .beton file: convert it with "
                    f"python -m pipeline.build_ffcv {path} OUT and point the key at OUT/<split>.beton, "
                    f"or set data.backend=torch to read the folder directly")
        return None
    if not p.exists():
        return (f"{path} does not exist (backend {backend} reads an image folder with one subfolder per "
                f"class, or a 'path label' file list)")
    if p.is_file() and p.suffix == ".beton":
        return f"{path} is an FFCV .beton, which backend {backend} cannot read: set data.backend=ffcv"
    return None


def _data_paths(cfg) -> list[tuple[str, str]]:
    """(key, path): ``data.train_path`` always, ``data.val_path`` when online evals or val
    reconstructions read it."""
    uses_val = (bool(cfg.evals.every) and (cfg.evals.knn or cfg.evals.linprobe)) or \
        (bool(cfg.recons.every) and cfg.recons.num_val > 0)
    keys = [("data.train_path", cfg.data.train_path)]
    if uses_val:
        keys.append(("data.val_path", cfg.data.val_path))
    return keys


def check_data_paths(cfg) -> None:
    """Each path the run reads exists and suits the back end (``ConfigError`` naming the key)."""
    for key, path in _data_paths(cfg):
        problem = _path_problem(path, cfg.data.backend) if path else "is empty"
        if problem:
            why = "" if key == "data.train_path" else " (read by the online evals / reconstructions; " \
                                                     "evals.every=0 recons.every=0 turn them off)"
            raise ConfigError(f"'{key}': {problem}{why}")


def _is_trainer(args: list[bytes]) -> bool:
    return any(a in (b"trainer.pretrain", b"trainer/pretrain.py") or a.endswith(b"/trainer/pretrain.py")
               for a in args)


def other_trainers(proc: Path = Path("/proc")) -> list[int]:
    """Pids of other ``trainer.pretrain`` processes on this machine, not counting this process,
    its ancestors, or the processes that share its parent (the other ranks of one torchrun)."""
    table = {}  # pid -> (parent pid, command line), one read of /proc
    for d in proc.glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            table[int(d.name)] = (ppid, (d / "cmdline").read_bytes().split(b"\0"))
        except (OSError, IndexError, ValueError):  # gone, or not ours to read
            continue
    skip, pid = set(), os.getpid()
    while pid in table and pid not in skip:  # this process and its ancestors (a launcher names the module)
        skip.add(pid)
        pid = table[pid][0]
    parent = os.getppid()
    return sorted(pid for pid, (ppid, args) in table.items()
                  if pid not in skip and ppid != parent and _is_trainer(args))


def concurrent_training_warning(pids: list[int]) -> str | None:
    """The warning for a CPU training that starts beside others (README, "One training at a time"):
    torch's OpenMP threads spin at barriers while another process holds the cores, so two runs on
    2 cores went 5x slower each, not 2x; sleeping threads (OMP_WAIT_POLICY=PASSIVE) avoid that."""
    if not pids or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return None
    shown = ", ".join(map(str, pids[:5])) + (" ..." if len(pids) > 5 else "")
    return (f"warning: {len(pids)} other trainer process(es) on this machine (pid {shown}): CPU trainings "
            f"side by side run several times slower each (OpenMP threads spin); run them one after the "
            f"other, or start each with OMP_WAIT_POLICY=PASSIVE (or threads=1)")


def cpu_scale_warning(cfg, n_params: int) -> str | None:
    """On a CPU-only machine: what about this setup is GPU work, and what to run instead; None if
    nothing is (call it only when the run is on CPU)."""
    reasons = []
    if n_params >= GPU_SCALE_PARAMS:
        reasons.append(f"{cfg.model.name} ({n_params / 1e6:.1f}M params)")
    if cfg.precision in ("bf16", "fp16"):
        reasons.append(f"precision {cfg.precision} (emulated on most CPUs: slower than fp32)")
    if cfg.compile:
        reasons.append("compile true (minutes of compiling on CPU before the first step)")
    if not reasons:
        return None
    return (f"warning: GPU-scale setup on a CPU-only machine: {', '.join(reasons)}; batch {cfg.data.batch_size} x "
            f"accum {cfg.optim.accum_steps} at {cfg.data.image_size} px. The step time follows after the first "
            f"steps. To try it on CPU: --config {CPU_PRESET}, or the overrides {CPU_OVERRIDES}")


def step_time_note(seconds_per_step: float, steps_per_epoch: int, epochs_left: float) -> str:
    def human(s: float) -> str:
        for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
            if s >= size:
                return f"{s / size:.1f} {unit}"
        return f"{s:.0f} s"
    return (f"warning: {seconds_per_step:.2f} s per step on this CPU: about {human(seconds_per_step * steps_per_epoch)} "
            f"per epoch ({steps_per_epoch} steps), {human(seconds_per_step * steps_per_epoch * epochs_left)} for the "
            f"{epochs_left:g} epochs left")


class DataError(RuntimeError):
    """An input file is damaged (e.g. .beton samples that differ from their checksums): exit 2."""


VERIFY_AUTO_MAX_BYTES = 2 * 2**30  # data.verify=auto: files up to this size are read in full (seconds)


def verify_data(cfg, say=print, auto_max_bytes: int = VERIFY_AUTO_MAX_BYTES) -> list:
    """``data.verify`` for the .beton files the run reads (backend ffcv): each checked completely
    (structure, every sample against ``<file>.sums``) by ``pipeline.beton.verify_beton``.

    ``auto`` checks files that have checksums and are at most ``auto_max_bytes`` (bigger ones are
    named, with how to check them), and skips the read of a file whose last passing check is
    remembered in ``<file>.verified`` and which, with its checksums and manifest, is unchanged
    since (``pipeline.beton.verified_stamp``; what ``python -m pipeline.beton --verify`` leaves
    too, so a big file checked once that way is trusted); ``always`` reads every file and requires
    its checksums; ``never`` checks nothing. Every passing read is remembered. A damaged file
    raises ``DataError`` with ``verify_beton``'s one line (the file and the bad sample indices).
    Returns the ``VerifyResult`` of each file checked (``verified_at`` set: from its stamp)."""
    mode = cfg.data.verify
    if mode == "never" or cfg.data.backend != "ffcv":
        return []
    results = []
    for key, path in _data_paths(cfg):
        if mode == "auto":
            if not sums_path(path).is_file():
                continue
            size = Path(path).stat().st_size
            if size > auto_max_bytes and verified_stamp(path) is None:
                say(f"{key}: {path} is {size / 2**30:.1f} GiB, not verified before training (data.verify=auto "
                    f"checks files up to {auto_max_bytes / 2**30:g} GiB; data.verify=always checks it, "
                    f"python -m pipeline.beton --verify {path} checks it once)")
                continue
        result = verify_beton(path, require_sums=mode == "always", trust_stamp=mode == "auto", record=True)
        if not result.ok:
            raise DataError(result.message)
        if result.verified_at:
            say(f"{key}: {result.message}; data.verify=always re-reads it")
        else:
            say(f"{key}: {result.message} ({result.seconds:.1f}s; data.verify=never skips this)")
        results.append(result)
    return results
