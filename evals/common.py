"""Shared plumbing of the eval CLIs: checkpoints, data paths, loaders, schedules, DDP, results.

Kept apart so linprobe / knn / finetune stay readable top to bottom and behave the same way
(same data resolution, same run-store record shape, same distributed setup).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import runstore
from common.distributed import init
from common.files import sha256_sidecar, verify_sha256
from common.schedule import lr_at, set_lr  # set_lr re-exported: linprobe, finetune
from evals.inputs import UserError, layout_hint, note
from model import load_checkpoint
from model.checkpoint import safe_torch_load
from pipeline import make_loader
from pipeline.sources import KAGGLE_SUBDIR
from runstore.layout import list_checkpoints

# ----------------------------------------------------------------------------- distributed
def init_distributed(device_arg: str = "auto") -> tuple[torch.device, int, int]:
    """Join the launch as the trainer does (`common.distributed.init`: torchrun or srun, nccl on
    CUDA, gloo on CPU); (device, rank, world_size). Without a launcher: rank 0 of 1."""
    info = init(device_arg)
    return info.device, info.rank, info.world_size


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (no-op without a process group)."""
    if dist_info()[1] > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


# ----------------------------------------------------------------------------- schedule
def warmup_cosine(it: float, total: float, warmup: float, base_lr: float, min_lr: float = 0.0) -> float:
    """`common.schedule.lr_at` (the trainer's schedule) in iterations, in the eval CLIs' argument order."""
    return lr_at(it, lr=base_lr, min_lr=min_lr, warmup_epochs=warmup, epochs=total)


# ----------------------------------------------------------------------------- metrics
@torch.no_grad()
def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is in the top-k predictions, for each k (k capped at classes)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(labels[:, None])
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


# ----------------------------------------------------------------------------- checkpoints
def resolve_ckpt(arg: str | os.PathLike) -> Path:
    """--ckpt as a checkpoint file: a file as given, a run directory (or its checkpoints/) as its
    `final.pth`, else its newest `ckpt-eEEEE-sSSSSSSSS.pth` (said on stdout); checked against its
    `.sha256` when there is one. Absolute, so records name the same file whatever the cwd."""
    p = Path(arg).expanduser()
    if p.is_file():
        return verified(p.resolve())
    valid = "pass a checkpoint file (.pth) or a run directory holding checkpoints/final.pth or checkpoints/ckpt-*.pth"
    if not p.exists():
        raise UserError(f"--ckpt {p}: no such file or directory; {valid}")
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if (folder / "final.pth").is_file():
        chosen, why = folder / "final.pth", "the finished run's weights"
    else:
        # the trainer's names, by step (runstore.layout), else any .pth by age
        found = [path for _, _, path in reversed(list_checkpoints(folder))] or sorted(
            folder.glob("*.pth"), key=lambda f: f.stat().st_mtime)
        if not found:
            raise UserError(f"--ckpt {p}: a directory with no checkpoint in it (no {folder}/final.pth, "
                            f"no {folder}/ckpt-*.pth); {valid}")
        chosen, why = found[-1], "no final.pth yet: the newest checkpoint"
    chosen = chosen.resolve()
    note(f"--ckpt {p} is a directory: using {chosen} ({why})")
    return verified(chosen)


def verified(path: Path) -> Path:
    """`path`, after checking it against the `NAME.sha256` the trainer writes beside every
    checkpoint: a flipped byte in the weights unpickles fine and gives a wrong result without a
    word. No sidecar (official downloads, hand-made files): nothing to check."""
    if not sha256_sidecar(path).is_file():
        return path
    problem = verify_sha256(path)
    if problem is not None:
        raise UserError(f"--ckpt {path}: {problem}: the file is corrupt or was replaced; not loaded")
    return path


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module          # a model.MaskedAutoencoderViT
    epoch: int | None               # training epoch stored in the checkpoint, if any
    path: Path


def load_mae(ckpt: str | os.PathLike) -> LoadedCheckpoint:
    """Load any checkpoint `model.load_checkpoint` reads, keeping the epoch our checkpoints store.

    Checkpoints are untrusted input: read with `model.checkpoint.safe_torch_load` (weights only,
    official MAE's argparse.Namespace allow-listed), so a pickle that would run code is refused
    without being unpickled. A file that is not a usable checkpoint is a UserError naming it.
    """
    path = Path(ckpt)
    if not path.is_file():
        raise UserError(f"--ckpt {path}: no such file; pass a checkpoint file (.pth) or a run directory")
    try:
        raw = safe_torch_load(path, map_location="cpu")
        epoch = raw.get("epoch") if isinstance(raw, dict) else None
        model = load_checkpoint(raw if isinstance(raw, dict) else str(path))
    except ValueError as e:  # UnsafeCheckpointError, unreadable file, weights of no known model
        msg = " ".join(str(e).split())
        raise UserError(msg if str(path) in msg else f"--ckpt {path}: {msg}") from None
    return LoadedCheckpoint(model=model, epoch=None if epoch is None else int(epoch), path=path)


def default_run_dir(ckpt: str | os.PathLike) -> Path | None:
    """RUN for a checkpoint at RUN/checkpoints/x.pth when RUN looks like a run (has config.yaml)."""
    run = Path(ckpt).resolve().parent.parent
    if Path(ckpt).resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def add_common_args(p, ckpt_help: str = "checkpoint (ours, official MAE, HF or timm ViT)",
                    writes_records: bool = True) -> None:
    """The arguments every eval CLI shares: --ckpt, --data, --backend, --run (only for a CLI that
    `writes_records` to a run store), --num-workers, --device."""
    p.add_argument("--ckpt", required=True,
                   help=ckpt_help + "; or a run directory: its checkpoints/final.pth, else its newest "
                                    "checkpoint")
    p.add_argument("--data", required=True,
                   help="directory with train.beton+val.beton, or train/+val/ image folders (class "
                        "subfolders; ILSVRC's flat val/ with LOC_val_solution.csv)")
    p.add_argument("--backend", default="auto", choices=["auto", "ffcv", "dali", "torch"],
                   help="loader back end (auto: ffcv for .beton, torch for folders)")
    if writes_records:
        p.add_argument("--run", default=None,
                       help="run directory to write the record into, or 'none' to print it only "
                            "(default: CKPT's run, RUN for RUN/checkpoints/X.pth; print only for a "
                            "checkpoint outside a run)")
    p.add_argument("--num-workers", type=int, default=2,
                   help="loader worker processes (at most the CPUs available)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")


def checked_run_dir(run: str | os.PathLike | None, ckpt: str | os.PathLike) -> Path | None:
    """The run store results go to: --run (must already be a run directory: checked before any
    work, so a long evaluation never ends in a write error) or the checkpoint's own run."""
    if run is None:
        return default_run_dir(ckpt)
    if str(run) == "none":
        return None
    if not (Path(run) / "config.yaml").is_file():
        raise UserError(f"--run {run}: not a run directory (no config.yaml); pass --run none to print "
                         f"the result only, or point it at a run made by trainer.pretrain")
    return Path(run)


def image_size_of(model: torch.nn.Module) -> int:
    """Input resolution of an MAE model (from its config, else its patch embedding)."""
    cfg = getattr(model, "config", None) or {}
    if "img_size" in cfg:
        s = cfg["img_size"]
        return int(s[0] if isinstance(s, (tuple, list)) else s)
    s = model.patch_embed.img_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


# ----------------------------------------------------------------------------- data
@dataclass
class DataSpec:
    backend: str
    train: str
    val: str


def resolve_data(data: str | os.PathLike, backend: str = "auto") -> DataSpec:
    """Turn --data into train/val paths and a loader back end.

    DATA may hold `train.beton`/`val.beton` (-> ffcv) or `train/`/`val/` image folders
    (-> torch, or dali when asked; val/ may be ILSVRC's flat one with LOC_val_solution.csv, and
    Kaggle's download is read from DATA/ILSVRC/Data/CLS-LOC). `backend` "auto" picks by what is there.
    """
    root = Path(data).expanduser().resolve()   # absolute: records name the data, not the cwd
    if not root.is_dir():
        raise UserError(f"--data {data}: not a directory (expected one holding train/ + val/ image "
                        "folders or train.beton + val.beton)")
    if not (root / "train").exists() and (root / KAGGLE_SUBDIR / "train").is_dir():
        root = root / KAGGLE_SUBDIR    # Kaggle's ImageNet download (its CSV sits at the top)
    betons = (root / "train.beton", root / "val.beton")
    folders = (root / "train", root / "val")
    if backend in ("auto", "ffcv") and all(p.is_file() for p in betons):
        return DataSpec("ffcv", str(betons[0]), str(betons[1]))
    if backend != "ffcv" and all(p.is_dir() for p in folders):
        return DataSpec("torch" if backend == "auto" else backend, str(folders[0]), str(folders[1]))
    raise UserError(f"--data {data}: found neither train.beton + val.beton nor train/ + val/ folders in "
                    f"it (--backend {backend}){layout_hint(root)}")


def make_eval_loader(spec_backend: str, path: str, image_size: int, batch_size: int, train: bool,
                     device: torch.device, num_workers: int = 2, seed: int = 0,
                     shuffle: bool | None = None, drop_last: bool | None = None,
                     sharded: bool = True, **options):
    """A pipeline loader, sharded over the current ranks unless `sharded=False`.

    A shuffled loader is set to epoch 0, so a capped read (`max_samples`) is the same random,
    class-mixed subset every time (pipeline contract: same seed and epoch -> same order).
    """
    rank, world = dist_info() if sharded else (0, 1)
    loader = make_loader(spec_backend, path, batch_size=batch_size, image_size=image_size,
                         train=train, num_workers=num_workers, device=str(device), seed=seed,
                         rank=rank, world_size=world, shuffle=shuffle, drop_last=drop_last, **options)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    return loader


# ----------------------------------------------------------------------------- results
def write_result(run_dir: Path | str | None, epoch: int | None, record: dict) -> None:
    """Print one eval record and append it to a run store (rank 0 only).

    `record` holds kind, top1, top5, loss, seconds, an optional `settings` dict, and extras
    (numbers become columns, text goes to settings; see runstore.log_eval). Uses the module-level
    runstore.log_eval, which is safe beside a trainer writing the same run. An unknown epoch is
    stored as -1.
    """
    rank, _ = dist_info()
    if rank != 0:
        return
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
    print(f"[evals] epoch={epoch} " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    if run_dir is None:
        print("[evals] result printed only (--run none, or a checkpoint outside a run directory)")
        return
    runstore.log_eval(run_dir, -1 if epoch is None else int(epoch), **record)
    print(f"[evals] written to run store {run_dir}")


class Timer:
    """Wall-clock seconds since construction (for the `seconds` field of records)."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
