"""Linear probing of a frozen MAE encoder (the paper's protocol) and its fast cached variant.

Protocol (MAE, appendix A.2): frozen encoder, cls token (or average pooling) ->
BatchNorm1d(affine=False, eps=1e-6) -> Linear initialised with std 0.01; LARS (momentum 0.9, no
weight decay), lr = blr * batch / 256 with blr 0.1, linear warm-up then cosine, per iteration;
RandomResizedCrop + flip for training, resize + centre crop for evaluation.

The BatchNorm without affine is what makes one lr work for any encoder: it whitens the feature
scale, and is a linear map, so the probe stays linear.

`--cached` extracts the (centre-cropped) train and val features once and trains the head on them:
no augmentation, but minutes turn into seconds; that is the mode used on CPU and every epoch.
A cache of a few thousand samples gives ~100x fewer steps than ImageNet, and a LARS step moves a
weight by about lr * 0.001 * ||w|| whatever the gradient, so blr 0.1 at batch 256 barely moves the
head (measured: 59% train accuracy on separable toy data). The cached mode therefore uses the
per-step lr of the paper's own run (blr 0.1 at batch 16384 -> lr 6.4, i.e. blr 6.4 at batch 256)
and at least 1000 steps (CACHED_BLR, CACHED_MIN_STEPS). Measured on Imagenette (8,469 train / 1,000
val, 192-d cls features of a random-init micro ViT at 64 px, 90 epochs at batch 256): blr 0.1 ->
29.3% val (29.8% train: underfit), 1.6 -> 41.8%, 6.4 -> 46.3%, 25.6 -> 47.6%; a fully converged
L-BFGS logistic regression on the same features: 48.7%. So on small data the full protocol also
needs a larger --blr than the paper's 0.1.

CLI: python -m evals.linprobe --ckpt RUN/checkpoints/last.pth --data DATA [--cached]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import Lars
from tqdm import tqdm

from evals.common import (Timer, add_common_args, all_reduce_sum, checked_run_dir, dist_info, image_size_of,
                          init_distributed, load_mae, make_eval_loader, resolve_ckpt, resolve_data, set_lr,
                          topk_correct, warmup_cosine, write_result)
from evals.features import bf16_autocast, embed, extract_features
from evals.inputs import (HelpFormatter, UserError, check_same_classes, clamp_workers, cli, data_settings,
                          fit_batch, open_split, require_at_least_one, require_steps)
from pipeline import to_model_input


CACHED_BLR = 6.4
CACHED_MIN_STEPS = 1000


class ProbeHead(nn.Sequential):
    """BatchNorm1d without affine (eps 1e-6) then Linear (weight std 0.01, bias 0)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=0.01)
        nn.init.zeros_(self[1].bias)


def lars(params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
         trust_coefficient: float = 0.001) -> Lars:
    """LARS as in MAE's util/lars.py, by timm's Lars: matrices get weight decay and the trust
    ratio eta * ||w|| / ||g|| (1 where either norm is 0); 1-D tensors (biases) are plain SGD with
    momentum. eps=0 makes it bit-identical to MAE's with the protocol's weight decay 0 (checked on a
    toy probe: 300 steps, same weights). With weight decay timm divides by ||g|| + wd * ||w||
    (You et al.'s LARS) where MAE divides by ||g + wd * w||: steps at most that much smaller."""
    params = list(params)
    return Lars([{"params": [p for p in params if p.ndim > 1], "always_adapt": True},
                 {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coeff=trust_coefficient, eps=0.0)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run tiny-op loops on one CPU thread: the head's ops are microseconds, and intra-op threads
    on a busy machine made them 10x slower (measured 62 s vs 6 s for 1000 steps at load 9)."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _lr(blr: float, batch: int) -> float:
    return blr * batch / 256


@torch.no_grad()
def _evaluate_feats(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 1024) -> dict:
    head.eval()
    loss_sum, c1, c5 = 0.0, 0, 0
    for s in range(0, feats.shape[0], batch_size):
        logits = head(feats[s:s + batch_size])
        y = labels[s:s + batch_size]
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        a, b = topk_correct(logits, y)
        c1, c5 = c1 + a, c5 + b
    n = feats.shape[0]
    return {"top1": c1 / n, "top5": c5 / n, "loss": loss_sum / n}


def train_probe_on_features(train_feats: torch.Tensor, train_labels: torch.Tensor,
                            val_feats: torch.Tensor, val_labels: torch.Tensor,
                            num_classes: int | None = None, epochs: int = 90,
                            batch_size: int = 256, blr: float = CACHED_BLR,
                            warmup_epochs: int = 10, weight_decay: float = 0.0, seed: int = 0,
                            device="cpu", progress: bool = False,
                            min_steps: int = CACHED_MIN_STEPS) -> dict:
    """The cached linear probe: train ProbeHead on fixed features; return val top1/top5/loss.

    Epochs are raised until there are `min_steps` steps (warm-up scaled alike), see module doc.
    Deterministic for a given seed (own generator). Also returns `train_top1` (a probe that cannot
    fit its training set says the features, not the head, are the limit), `epochs` run, `steps`
    taken and the `batch_size` used (capped at the number of training samples).
    """
    device = torch.device(device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    xtr, ytr = train_feats.float().to(device), train_labels.long().to(device)
    xva, yva = val_feats.float().to(device), val_labels.long().to(device)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ProbeHead(xtr.shape[1], num_classes).to(device)
    n = xtr.shape[0]
    batch_size = min(batch_size, n)
    steps_per_epoch = max(1, n // batch_size)          # drop the ragged last batch (BatchNorm)
    if epochs * steps_per_epoch < min_steps:
        stretch = min_steps / (epochs * steps_per_epoch)
        epochs, warmup_epochs = math.ceil(epochs * stretch), warmup_epochs * stretch
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    base_lr = _lr(blr, batch_size)
    opt = lars(head.parameters(), weight_decay=weight_decay)
    with _one_cpu_thread(device):
        _train_cached(head, opt, xtr, ytr, g, epochs, steps_per_epoch, batch_size, total, warmup,
                      base_lr, progress)
        res = _evaluate_feats(head, xva, yva)
        res["train_top1"] = _evaluate_feats(head, xtr, ytr)["top1"]
    res.update(epochs=epochs, steps=total, batch_size=batch_size)
    return res


def _train_cached(head, opt, xtr, ytr, g, epochs, steps_per_epoch, batch_size, total, warmup,
                  base_lr, progress):
    n, it = xtr.shape[0], 0
    for _ in tqdm(range(epochs), desc="linprobe (cached)", leave=False, disable=not progress):
        head.train()
        perm = torch.randperm(n, generator=g).to(xtr.device)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            set_lr(opt, warmup_cosine(it, total, warmup, base_lr))
            loss = F.cross_entropy(head(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1


def train_probe_on_loader(model: nn.Module, train_loader, val_loader, num_classes: int, device,
                          pool: str = "cls", epochs: int = 90, blr: float = 0.1,
                          warmup_epochs: int = 10, weight_decay: float = 0.0) -> dict:
    """The full protocol: augmented batches through the frozen encoder into a trained head.

    Under DDP the head is wrapped in DistributedDataParallel and the effective batch is the sum
    over ranks (lr = blr * global batch / 256). Returns val top1/top5/loss and `steps`, the
    optimiser steps taken (0 means the head is its initialisation: never report that).
    """
    device = torch.device(device)
    rank, world = dist_info()
    model.eval().requires_grad_(False)
    cfg = getattr(model, "config", None) or {}
    if "embed_dim" in cfg:
        dim = int(cfg["embed_dim"])
    else:   # any other encoder: one batch tells the width
        dim = embed(model, to_model_input(next(iter(val_loader))[0][:2], device), pool).shape[1]
    head = ProbeHead(dim, num_classes).to(device)
    if world > 1:
        head = nn.parallel.DistributedDataParallel(head)
    steps = len(train_loader)
    batch = getattr(train_loader, "batch_size", None) or next(iter(train_loader))[0].shape[0]
    base_lr = _lr(blr, batch * world)
    opt = lars(head.parameters(), weight_decay=weight_decay)
    taken = 0
    for epoch in range(epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        head.train()
        bar = tqdm(train_loader, desc=f"linprobe epoch {epoch}", leave=False, disable=rank != 0)
        for i, (images, labels) in enumerate(bar):
            set_lr(opt, warmup_cosine(epoch * steps + i, epochs * steps, warmup_epochs * steps,
                                      base_lr))
            with torch.no_grad(), bf16_autocast(device):
                f = embed(model, to_model_input(images, device), pool)
            loss = F.cross_entropy(head(f.float()), labels.to(device).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            taken += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
    head.eval()
    stats = torch.zeros(4, device=device, dtype=torch.float64)   # loss sum, top1, top5, n
    with torch.no_grad():
        for images, labels in tqdm(val_loader, desc="linprobe eval", leave=False, disable=rank != 0):
            labels = labels.to(device).long()
            with bf16_autocast(device):
                f = embed(model, to_model_input(images, device), pool)
            logits = head(f.float())
            a, b = topk_correct(logits, labels)
            stats += torch.tensor([float(F.cross_entropy(logits, labels, reduction="sum")), a, b,
                                   labels.numel()], device=device, dtype=torch.float64)
    stats = all_reduce_sum(stats)
    n = max(float(stats[3]), 1.0)
    return {"top1": float(stats[1]) / n, "top5": float(stats[2]) / n, "loss": float(stats[0]) / n,
            "steps": taken}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.linprobe", formatter_class=HelpFormatter,
        description="Linear probe of a frozen MAE encoder, MAE protocol: BatchNorm1d(affine=False) "
                    "+ Linear head, LARS, lr = blr*batch/256, warm-up + cosine, RandomResizedCrop+"
                    "flip train / centre-crop eval. --cached trains on features extracted once "
                    "(centre crop, no augmentation): the fast CPU / per-epoch mode. Multi-GPU: "
                    "torchrun --nproc_per_node=N -m evals.linprobe ...",
        epilog="Writes: prints top-1/top-5/loss and appends one 'linprobe_full' record ('linprobe' "
               "with --cached), with the data, sizes and settings it was computed on, to "
               "RUN/evals.zarr of the checkpoint's run (RUN/checkpoints/X.pth -> RUN) or of --run; "
               "nothing else. Outside a run it only prints.")
    add_common_args(p)
    p.add_argument("--cached", action="store_true",
                   help="train the head on features extracted once (default: the full protocol)")
    p.add_argument("--pool", default="cls", choices=["cls", "avg"], help="encoder feature")
    p.add_argument("--epochs", type=int, default=90,
                   help="training epochs (--cached: raised to reach 1000 steps)")
    p.add_argument("--warmup-epochs", type=int, default=10, help="linear lr warm-up epochs")
    p.add_argument("--batch-size", type=int, default=256,
                   help="per process; shrunk (with a warning) to a train split smaller than it")
    p.add_argument("--blr", type=float, default=None,
                   help="lr = blr * global batch / 256 (default 0.1, the paper's, meant for "
                        f"ImageNet-size data; with --cached {CACHED_BLR}). LARS steps are relative "
                        "to ||w||, so few steps (small data) need a larger blr: see the module doc")
    p.add_argument("--weight-decay", type=float, default=0.0, help="LARS weight decay")
    p.add_argument("--max-train", type=int, default=None,
                   help="--cached: cap on train samples (default: all)")
    p.add_argument("--max-val", type=int, default=None, help="--cached: cap on val samples (default: all)")
    p.add_argument("--seed", type=int, default=0, help="head init, sample order, augmentation")
    return p


@cli("python -m evals.linprobe")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # every input is checked before the checkpoint is read and long before the probe runs
    args.num_workers = clamp_workers(args.num_workers)
    require_at_least_one(args, "--epochs", "--max-train", "--max-val")
    if not args.cached and (args.max_train or args.max_val):
        raise UserError("--max-train / --max-val cap the cached probe's features: add --cached, or "
                        "leave them out for the full protocol on the whole splits")
    ckpt = resolve_ckpt(args.ckpt)
    run = checked_run_dir(args.run, ckpt)
    spec = resolve_data(args.data, args.backend)
    if args.blr is None:
        args.blr = CACHED_BLR if args.cached else 0.1
    timer = Timer()
    device, _, world = init_distributed(args.device)
    torch.manual_seed(args.seed)
    ck = load_mae(ckpt)
    model = ck.model.to(device)
    size = image_size_of(model)

    def loader(split, path, batch, train, shuffle=None):
        return open_split(args.data, split, make_eval_loader, spec.backend, path, size, batch, train,
                          device, args.num_workers, seed=args.seed, shuffle=shuffle)

    batch = args.batch_size
    if args.cached:
        tr = loader("train", spec.train, batch, False, shuffle=args.max_train is not None)
        va = loader("val", spec.val, batch, False, shuffle=args.max_val is not None)
        check_same_classes(tr.classes, va.classes, spec.train, spec.val)
        n_train = min(tr.num_samples, args.max_train or tr.num_samples)
        global_batch = fit_batch(batch * world, n_train, 1, spec.train)   # features are gathered
        ftr, ytr = extract_features(model, tr, device, args.pool, args.max_train, "train features")
        fva, yva = extract_features(model, va, device, args.pool, args.max_val, "val features")
        res = train_probe_on_features(ftr, ytr, fva, yva, tr.num_classes, args.epochs,
                                      global_batch, args.blr, args.warmup_epochs,
                                      args.weight_decay, args.seed, device, progress=True)
        kind, n_train, n_val = "linprobe", int(ftr.shape[0]), int(fva.shape[0])
        epochs, global_batch = res.pop("epochs"), res.pop("batch_size")
        extra = {"train_top1": res.pop("train_top1")}
    else:
        tr = loader("train", spec.train, batch, True)
        va = loader("val", spec.val, batch, False)
        check_same_classes(tr.classes, va.classes, spec.train, spec.val)
        fitted = fit_batch(batch, tr.num_samples, world, spec.train)
        if fitted != batch:       # drop_last: a batch larger than the split trains 0 steps
            batch, tr = fitted, loader("train", spec.train, fitted, True)
        res = train_probe_on_loader(model, tr, va, tr.num_classes, device, args.pool, args.epochs,
                                    args.blr, args.warmup_epochs, args.weight_decay)
        kind, n_train, n_val, epochs, extra = "linprobe_full", tr.num_samples, va.num_samples, args.epochs, {}
        global_batch = batch * world
    require_steps(res["steps"], kind)
    settings = {**data_settings(args.data, spec, size, n_train, n_val), "pool": args.pool,
                "epochs": epochs, "warmup_epochs": args.warmup_epochs, "blr": args.blr,
                "lr": args.blr * global_batch / 256, "batch_size": global_batch,
                "weight_decay": args.weight_decay, "seed": args.seed, "cached": args.cached,
                "max_train": args.max_train, "max_val": args.max_val, "checkpoint": str(ck.path)}
    write_result(run, ck.epoch, {"kind": kind, **res, "n_train": n_train, "n_val": n_val,
                                 "seconds": timer(), **extra, "settings": settings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
