"""Weighted k-nearest-neighbour classification of frozen features (the DINO-style vote).

Why: kNN needs no training, so it is the cheapest honest signal of what the encoder learned, and
it cannot be rescued by a strong head. Features are L2-normalised, the k most cosine-similar
training samples vote for their class with weight exp(sim / T).

CLI: python -m evals.knn --ckpt RUN/checkpoints/last.pth --data DATA [--k 20 --temperature 0.07]
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from evals.common import (Timer, add_common_args, checked_run_dir, image_size_of, init_distributed, load_mae,
                          make_eval_loader, resolve_ckpt, resolve_data, write_result)
from evals.features import extract_features
from evals.inputs import (HelpFormatter, UserError, check_same_classes, clamp_workers, cli, data_settings,
                          open_split, require_at_least_one)


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, T: float = 0.07,
                 num_classes: int | None = None, chunk: int = 1024) -> dict:
    """Weighted kNN accuracy; returns dict(top1, top5) as fractions in [0, 1].

    Each test sample sums exp(cos / T) of its k nearest training samples per class; the class
    ranking of these sums gives top-1 / top-5 (top-5 capped at the number of classes).
    """
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError("knn_classify: empty train or test features")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    train_labels = train_labels.long().to(train.device)
    test_labels = test_labels.long().to(train.device)
    k = min(k, train.shape[0])
    hits1 = hits5 = 0
    for s in range(0, test.shape[0], chunk):
        sim = test[s:s + chunk].to(train.device) @ train.T                   # (b, Ntrain)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / T).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        ranked = votes.argsort(dim=1, descending=True)
        y = test_labels[s:s + chunk][:, None]
        hits1 += int((ranked[:, :1] == y).any(1).sum())
        hits5 += int((ranked[:, :min(5, num_classes)] == y).any(1).sum())
    n = test.shape[0]
    return {"top1": hits1 / n, "top5": hits5 / n}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.knn", formatter_class=HelpFormatter,
        description="Weighted kNN (k nearest cosine neighbours vote with exp(sim/T)) on frozen "
                    "features of an MAE encoder: centre-cropped train images are the memory bank, "
                    "val images are classified.",
        epilog="Writes: prints top-1/top-5 and appends one 'knn' record, with the data, sizes and "
               "settings it was computed on, to RUN/evals.zarr of the checkpoint's run "
               "(RUN/checkpoints/X.pth -> RUN) or of --run; nothing else. Outside a run it only prints.")
    add_common_args(p)
    p.add_argument("--k", type=int, default=20, help="neighbours that vote")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(cos / T)")
    p.add_argument("--pool", default="cls", choices=["cls", "avg"], help="encoder feature")
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch per process")
    p.add_argument("--max-train", type=int, default=None, help="cap on memory-bank samples (default: all)")
    p.add_argument("--max-val", type=int, default=None, help="cap on evaluated samples (default: all)")
    return p


@cli("python -m evals.knn")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # every input is checked before the checkpoint is read and long before features are extracted
    args.num_workers = clamp_workers(args.num_workers)
    require_at_least_one(args, "--k", "--batch-size", "--max-train", "--max-val")
    if not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: must be > 0")
    ckpt = resolve_ckpt(args.ckpt)
    run = checked_run_dir(args.run, ckpt)
    spec = resolve_data(args.data, args.backend)
    timer = Timer()
    device, _, _ = init_distributed(args.device)
    ck = load_mae(ckpt)
    model = ck.model.to(device)
    size = image_size_of(model)
    # the memory bank is read in eval mode but shuffled with a fixed seed, so a --max-train cap
    # still covers every class
    tr = open_split(args.data, "train", make_eval_loader, spec.backend, spec.train, size,
                    args.batch_size, False, device, args.num_workers, shuffle=args.max_train is not None)
    va = open_split(args.data, "val", make_eval_loader, spec.backend, spec.val, size,
                    args.batch_size, False, device, args.num_workers, shuffle=args.max_val is not None)
    check_same_classes(tr.classes, va.classes, spec.train, spec.val)
    ftr, ytr = extract_features(model, tr, device, args.pool, args.max_train, desc="train features")
    fva, yva = extract_features(model, va, device, args.pool, args.max_val, desc="val features")
    res = knn_classify(ftr.to(device), ytr, fva.to(device), yva, k=args.k, T=args.temperature,
                       num_classes=tr.num_classes)
    n_train, n_val = int(ftr.shape[0]), int(fva.shape[0])
    settings = {**data_settings(args.data, spec, size, n_train, n_val), "k": args.k,
                "temperature": args.temperature, "pool": args.pool, "batch_size": args.batch_size,
                "max_train": args.max_train, "max_val": args.max_val, "checkpoint": str(ck.path)}
    write_result(run, ck.epoch, {"kind": "knn", **res, "loss": None, "n_train": n_train,
                                 "n_val": n_val, "seconds": timer(), "settings": settings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
