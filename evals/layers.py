"""Which encoder block's features are best: kNN and the cached linear probe on every block's output.

    python -m evals.layers --ckpt RUN --data DATA [--pool avg] [--out RUN/layers.md]

Why: the paper (Table 1a) explains the weak linear probe of a shallow-decoder MAE by its last
encoder blocks specialising in reconstruction, which would make an earlier block the better
feature. This measures it instead of assuming it: one pass of the frozen encoder over the centre-
cropped train and val images keeps each block's tokens (through the encoder's final LayerNorm, so
the last block is exactly the features `evals.knn` and `evals.linprobe --cached` use), pooled as
--pool; then kNN and the cached probe (the trainer's online-eval settings) run on each block, for
the checkpoint and, unless --no-random-init, for the same encoder at random initialisation (seed 0),
the baseline every margin in this project is measured against.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn

from common.files import write_atomic
from evals.common import (Timer, add_common_args, image_size_of, init_distributed, load_mae, make_eval_loader,
                          resolve_ckpt, resolve_data)
from evals.features import extract_features
from evals.inputs import (HelpFormatter, UserError, check_same_classes, clamp_workers, cli, open_split,
                          require_at_least_one)
from evals.knn import knn_classify
from evals.linprobe import CACHED_BLR, train_probe_on_features


class PerBlock(nn.Module):
    """An MAE seen by `extract_features` as one encoder whose feature is every block's pooled tokens,
    side by side: (N, depth * D), block b in columns [(b-1) * D, b * D)."""

    def __init__(self, mae: nn.Module):
        super().__init__()
        self.mae = mae

    def encode(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        blocks = self.mae.block_features(images)
        return torch.cat([t[:, 0] if pool == "cls" else t[:, 1:].mean(dim=1) for t in blocks], dim=1)


def per_block_scores(model: nn.Module, tr, va, device, pool: str, k: int, T: float, probe_epochs: int,
                     batch_size: int, max_train: int | None, max_val: int | None, name: str) -> list[dict]:
    """kNN and cached-probe top-1 of each block's features: one dict per block (1-based)."""
    blocks = PerBlock(model)
    ftr, ytr = extract_features(blocks, tr, device, pool, max_train, desc=f"{name} train")
    fva, yva = extract_features(blocks, va, device, pool, max_val, desc=f"{name} val")
    num_classes = getattr(tr, "num_classes", None) or int(max(ytr.max(), yva.max())) + 1
    dim, rows = int(model.config["embed_dim"]), []
    for b in range(len(model.blocks)):
        a, v = ftr[:, b * dim:(b + 1) * dim], fva[:, b * dim:(b + 1) * dim]
        knn = knn_classify(a.to(device), ytr, v.to(device), yva, k=k, T=T, num_classes=num_classes)
        probe = train_probe_on_features(a, ytr, v, yva, num_classes, epochs=probe_epochs, batch_size=batch_size,
                                        blr=CACHED_BLR, warmup_epochs=max(1, probe_epochs // 10), device=device)
        rows.append({"block": b + 1, "knn": knn["top1"], "probe": probe["top1"],
                     "probe_train": probe["train_top1"]})
        print(f"[layers] {name} block {b + 1}: kNN {knn['top1']:.3f}, probe {probe['top1']:.3f} "
              f"(train {probe['train_top1']:.3f})", flush=True)
    return rows


def table(results: dict[str, list[dict]], meta: str) -> str:
    names = list(results)
    head = " | ".join(f"{n} kNN | {n} probe" for n in names)
    lines = [meta, "", f"| block | {head} |", "|---:|" + "---:|" * (2 * len(names))]
    depth = len(results[names[0]])
    for b in range(depth):
        cells = " | ".join(f"{100 * results[n][b]['knn']:.1f} | {100 * results[n][b]['probe']:.1f}" for n in names)
        lines.append(f"| {b + 1}{' (last)' if b == depth - 1 else ''} | {cells} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.layers", formatter_class=HelpFormatter,
        description="kNN and cached linear probe on every encoder block's pooled features, for a "
                    "checkpoint and the same encoder at random init; prints a markdown table.",
        epilog="Writes nothing but --out (the table, written atomically). Records of the usual evals "
               "(python -m evals.knn / evals.linprobe --cached) are the last block's numbers.")
    add_common_args(p, writes_records=False)
    p.add_argument("--pool", default="cls", choices=["cls", "avg"], help="token pooling of each block")
    p.add_argument("--k", type=int, default=20, help="kNN neighbours that vote")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN vote weight exp(cos / T)")
    p.add_argument("--probe-epochs", type=int, default=90, help="cached linear-probe epochs per block")
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction and probe batch")
    p.add_argument("--max-train", type=int, default=None, help="cap on train samples (default: all)")
    p.add_argument("--max-val", type=int, default=None, help="cap on val samples (default: all)")
    p.add_argument("--no-random-init", action="store_true",
                   help="skip the same encoder at random initialisation (halves the time)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file (default: print only)")
    return p


@cli("python -m evals.layers")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.num_workers = clamp_workers(args.num_workers)
    require_at_least_one(args, "--k", "--probe-epochs", "--batch-size", "--max-train", "--max-val")
    if not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: must be > 0")
    ckpt = resolve_ckpt(args.ckpt)
    spec = resolve_data(args.data, args.backend)
    timer = Timer()
    device, _, _ = init_distributed(args.device)
    ck = load_mae(ckpt)
    size = image_size_of(ck.model)
    tr = open_split(args.data, "train", make_eval_loader, spec.backend, spec.train, size, args.batch_size,
                    False, device, args.num_workers, shuffle=args.max_train is not None)
    va = open_split(args.data, "val", make_eval_loader, spec.backend, spec.val, size, args.batch_size,
                    False, device, args.num_workers, shuffle=args.max_val is not None)
    check_same_classes(tr.classes, va.classes, spec.train, spec.val)
    models = {"MAE": ck.model}
    if not args.no_random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            models["random init"] = type(ck.model)(**ck.model.config)
    results = {name: per_block_scores(m.to(device), tr, va, device, args.pool, args.k, args.temperature,
                                      args.probe_epochs, args.batch_size, args.max_train, args.max_val, name)
               for name, m in models.items()}
    meta = (f"{ck.path} (epoch {ck.epoch}), {args.pool}-pooled tokens of each block through the final norm, "
            f"kNN k={args.k} T={args.temperature}, cached probe {args.probe_epochs} epochs, top-1 (%) on "
            f"{spec.val}; {timer():.0f} s")
    text = table(results, meta)
    print(text)
    if args.out:
        write_atomic(args.out, text)
        print(f"[layers] table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
