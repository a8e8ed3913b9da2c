"""End-to-end fine-tuning of an MAE encoder (the paper's recipe), or the same ViT from scratch.

Recipe (MAE appendix A.1, ViT-B / ViT-L,H): timm VisionTransformer with global average pooling and
fc_norm, AdamW (0.9, 0.999), wd 0.05, lr = blr * batch / 256 (blr 5e-4 B, 1e-3 L/H), layer-wise lr
decay (0.65 B, 0.75 L/H), drop path (0.1 B, 0.2 L/H), 5 warm-up epochs then cosine to 1e-6,
label smoothing 0.1, mixup 0.8 / cutmix 1.0 (timm Mixup + SoftTargetCrossEntropy), RandAugment
(9, 0.5), random erasing 0.25. Defaults follow the encoder's width (<= 768 -> B settings).

`--from-scratch` trains the same architecture from random init with the same recipe, except the
layer decay is 1.0 unless given: decaying the lr of random lower layers only handicaps the baseline
(the paper's from-scratch recipe has no layer decay either).

Data. Training augmentation is per image, which the pipeline's loaders (fixed RRC + flip, no hook
for other transforms) do not offer. So:
  * image folders: a torchvision ImageFolder with timm's `create_transform` training pipeline
    (RRC 0.08-1 bicubic, flip, rand-m9-mstd0.5-inc1, random erasing 0.25 in pixel mode);
  * .beton files: the pipeline's FFCV train loader (RRC 0.2-1 + flip), then torchvision v2
    RandAugment per image on the de-normalised uint8 pixels and timm RandomErasing on the batch.
Evaluation always uses the pipeline's centre-crop loader.

CLI: python -m evals.finetune --ckpt RUN/checkpoints/last.pth --data DATA [--epochs 100]
     torchrun --nproc_per_node=8 -m evals.finetune ...   (DDP; batch is per process)
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup, create_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2
from tqdm import tqdm

from common.imagenet import IMAGENET_MEAN as MEAN
from common.imagenet import IMAGENET_STD as STD
from evals.common import (Timer, add_common_args, all_reduce_sum, checked_run_dir, dist_info, image_size_of,
                          init_distributed, load_mae, make_eval_loader, resolve_ckpt, resolve_data, set_lr,
                          topk_correct, warmup_cosine, write_result)
from evals.features import bf16_autocast
from evals.inputs import (HelpFormatter, NonFiniteLoss, UserError, check_same_classes, clamp_workers, cli,
                          data_settings, fit_batch, open_split, require_steps)
from model import mae_to_timm_vit_state_dict
from pipeline import to_model_input


# ----------------------------------------------------------------------------- model
def build_vit(mae: nn.Module, num_classes: int, drop_path: float, pretrained: bool = True,
              seed: int = 0) -> nn.Module:
    """A timm VisionTransformer (global_pool='avg', fc_norm) shaped like the MAE encoder.

    pretrained: encoder weights via model.mae_to_timm_vit_state_dict (the final norm becomes
    fc_norm), head trunc-normal std 2e-5 as in the official fine-tuning. Otherwise timm's init.
    """
    c = mae.config
    size = image_size_of(mae)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = VisionTransformer(img_size=size, patch_size=c["patch_size"],
                                in_chans=c.get("in_chans", 3), embed_dim=c["embed_dim"],
                                depth=c["depth"], num_heads=c["num_heads"],
                                mlp_ratio=c.get("mlp_ratio", 4.0), qkv_bias=True,
                                num_classes=num_classes, global_pool="avg", fc_norm=True,
                                drop_path_rate=drop_path)
        if pretrained:
            sd = mae_to_timm_vit_state_dict(mae.state_dict(), global_pool="avg")
            missing, unexpected = vit.load_state_dict(sd, strict=False)
            if unexpected or set(missing) - {"head.weight", "head.bias"}:
                raise RuntimeError(f"encoder -> timm ViT: missing {missing}, unexpected {unexpected}")
            nn.init.trunc_normal_(vit.head.weight, std=2e-5)
            nn.init.zeros_(vit.head.bias)
    return vit


def default_layer_decay(embed_dim: int) -> float:
    """The paper's decay by model width: 0.65 up to ViT-B (768), 0.75 for ViT-L/H."""
    return 0.65 if embed_dim <= 768 else 0.75


def layer_decay_groups(vit: VisionTransformer, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW param groups with layer-wise lr decay (BEiT / MAE recipe), by timm's
    param_groups_layer_decay: the group's `lr_scale` is decay ** (L + 1 - layer id), with layer 0
    for cls_token, pos_embed and patch_embed, i + 1 for blocks.i, L + 1 for fc_norm and the head;
    no weight decay on 1-D tensors, cls_token and pos_embed (`vit.no_weight_decay()`).

    The same groups, scales and weight decays as MAE's util/lr_decay.py for the ViTs build_vit
    makes (checked on micro, ViT-B and ViT-L): global_pool='avg' leaves their final `norm` an
    Identity; a real final norm would get a layer of its own in timm, the head's in MAE."""
    return param_groups_layer_decay(vit, weight_decay, vit.no_weight_decay(), layer_decay=layer_decay)


# ----------------------------------------------------------------------------- data
def folder_train_loader(root: str, image_size: int, batch_size: int, num_workers: int, seed: int,
                        re_prob: float, rand_aug: str):
    """ImageFolder + timm's training transform (see module doc for why not the pipeline)."""
    tf = create_transform(image_size, is_training=True, color_jitter=None, auto_augment=rand_aug,
                          interpolation="bicubic", re_prob=re_prob, re_mode="pixel", re_count=1,
                          mean=MEAN, std=STD)
    ds = ImageFolder(root, transform=tf)
    rank, world = dist_info()
    sampler = torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=seed) \
        if world > 1 else None
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=sampler is None,
                                       sampler=sampler, num_workers=num_workers, drop_last=True,
                                       pin_memory=torch.cuda.is_available(), generator=g,
                                       persistent_workers=num_workers > 0)


class TensorAugment:
    """RandAugment per image + random erasing per batch, for already-decoded normalised batches."""

    def __init__(self, device, re_prob: float, num_ops: int = 2, magnitude: int = 9):
        self.rand_aug = v2.RandAugment(num_ops=num_ops, magnitude=magnitude) if num_ops else None
        self.erase = RandomErasing(re_prob, mode="pixel", device=str(device)) if re_prob else None
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if self.rand_aug is not None:
            pix = ((images * self.std + self.mean) * 255).round().clamp(0, 255).to(torch.uint8)
            pix = torch.stack([self.rand_aug(im) for im in pix])
            images = (pix.float() / 255 - self.mean) / self.std
        if self.erase is not None:
            images = self.erase(images)
        return images


# ----------------------------------------------------------------------------- train / eval
@torch.no_grad()
def evaluate(model: nn.Module, loader, device) -> dict:
    """Top-1 / top-5 / cross-entropy of `model` over a (sharded) loader, summed over ranks."""
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in tqdm(loader, desc="finetune eval", leave=False,
                               disable=dist_info()[0] != 0):
        labels = labels.to(device).long()
        with bf16_autocast(device):
            logits = model(to_model_input(images, device)).float()
        a, b = topk_correct(logits, labels)
        stats += torch.tensor([float(F.cross_entropy(logits, labels, reduction="sum")), a, b,
                               labels.numel()], dtype=torch.float64, device=device)
    stats = all_reduce_sum(stats)
    n = max(float(stats[3]), 1.0)
    return {"top1": float(stats[1]) / n, "top5": float(stats[2]) / n, "loss": float(stats[0]) / n}


def finetune(vit: nn.Module, train_loader, val_loader, num_classes: int, device, epochs: int,
             blr: float, layer_decay: float, weight_decay: float = 0.05, warmup_epochs: float = 5,
             min_lr: float = 1e-6, smoothing: float = 0.1, mixup: float = 0.8,
             cutmix: float = 1.0, tensor_aug: TensorAugment | None = None,
             eval_every: int = 0) -> dict:
    """Train `vit` with the recipe and return the final val metrics, `steps` (optimiser steps
    taken; 0 means an untrained head: never report it) and `history` if eval_every."""
    device = torch.device(device)
    rank, world = dist_info()
    vit = vit.to(device)
    opt = torch.optim.AdamW(layer_decay_groups(vit, weight_decay, layer_decay), lr=0.0, betas=(0.9, 0.999))
    model = nn.parallel.DistributedDataParallel(vit) if world > 1 else vit
    mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                num_classes=num_classes) if (mixup > 0 or cutmix > 0) else None
    criterion = SoftTargetCrossEntropy() if mix else \
        (LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss())
    steps = len(train_loader)
    batch = train_loader.batch_size
    base_lr = blr * batch * world / 256
    history, taken = [], 0
    for epoch in range(epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        elif isinstance(getattr(train_loader, "sampler", None),
                        torch.utils.data.DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(train_loader, desc=f"finetune epoch {epoch}", leave=False, disable=rank != 0)
        for i, (images, labels) in enumerate(bar):
            set_lr(opt, warmup_cosine(epoch * steps + i, epochs * steps, warmup_epochs * steps,
                                      base_lr, min_lr))
            # loaders may hand out uint8 (pipeline contract): normalised here, on the device
            images = to_model_input(images, device)
            labels = labels.to(device, non_blocking=True).long()
            if tensor_aug is not None:
                images = tensor_aug(images)
            if mix is not None:
                images, labels = mix(images, labels)
            with bf16_autocast(device):
                loss = criterion(model(images).float(), labels)
            # summed over the processes, so that all of them stop at the same step
            total = all_reduce_sum(loss.detach())
            if not torch.isfinite(total):
                where = f" (summed over the {world} processes)" if world > 1 else ""
                raise NonFiniteLoss(f"the fine-tune loss is {float(total)}{where} at epoch {epoch + 1}/{epochs}, "
                                    f"step {i + 1}/{steps}: training diverged; lower --blr (now {blr:g}) or "
                                    f"lengthen --warmup-epochs (now {warmup_epochs:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            taken += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < epochs:
            history.append({"epoch": epoch + 1, **evaluate(vit, val_loader, device)})
            if rank == 0:
                print(f"[finetune] epoch {epoch + 1}: {history[-1]}", flush=True)
    res = evaluate(vit, val_loader, device)
    res["steps"] = taken
    if history:
        res["history"] = history
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evals.finetune", formatter_class=HelpFormatter,
        description="Fine-tune an MAE encoder end to end with the paper's recipe (timm ViT, avg "
                    "pool + fc_norm, layer-wise lr decay, AdamW, mixup/cutmix, RandAugment, random "
                    "erasing, label smoothing, drop path, warm-up + cosine), or the same ViT from "
                    "random init (--from-scratch). Defaults follow the encoder width (ViT-B vs "
                    "L/H). DDP: torchrun --nproc_per_node=N.",
        epilog="Writes: prints top-1/top-5/loss and appends one 'finetune' record ('finetune_scratch' "
               "with --from-scratch), with the data, sizes and settings it was computed on, to "
               "RUN/evals.zarr of the checkpoint's run (RUN/checkpoints/X.pth -> RUN) or of --run. "
               "The fine-tuned weights are not saved. Outside a run it only prints.")
    add_common_args(p, ckpt_help="checkpoint (ours, official MAE, HF or timm); with --from-scratch only "
                                 "its architecture is used")
    p.add_argument("--from-scratch", action="store_true", help="random init, same recipe")
    p.add_argument("--epochs", type=int, default=None, help="default 100 (B) / 50 (L/H)")
    p.add_argument("--warmup-epochs", type=float, default=5, help="linear lr warm-up epochs")
    p.add_argument("--batch-size", type=int, default=128,
                   help="per process, even (mixup pairs samples); shrunk (with a warning) to a train "
                        "split smaller than it")
    p.add_argument("--blr", type=float, default=None,
                   help="lr = blr * global batch / 256; default 5e-4 (B) / 1e-3 (L/H)")
    p.add_argument("--min-lr", type=float, default=1e-6, help="end of the cosine")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--layer-decay", type=float, default=None,
                   help="default 0.65 (B) / 0.75 (L/H); 1.0 with --from-scratch")
    p.add_argument("--drop-path", type=float, default=None, help="default 0.1 (B) / 0.2 (L/H)")
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    p.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    p.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    p.add_argument("--rand-aug", default="rand-m9-mstd0.5-inc1",
                   help="timm RandAugment spec ('' for none)")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N epochs (0: only at the end)")
    p.add_argument("--seed", type=int, default=0, help="init, sample order, augmentation")
    return p


def _train_loader(args, spec, size, batch, device):
    """The training loader for --data: FFCV + per-image tensor augmentation, or ImageFolder +
    timm transforms (see the module doc); (loader, number of samples, class names)."""
    if spec.backend == "ffcv":
        train = open_split(args.data, "train", make_eval_loader, "ffcv", spec.train, size, batch, True,
                           device, args.num_workers, seed=args.seed, drop_last=True)
        return train, train.num_samples, train.classes
    train = open_split(args.data, "train", folder_train_loader, spec.train, size, batch,
                       args.num_workers, args.seed, args.reprob, args.rand_aug or None)
    return train, len(train.dataset), train.dataset.classes


@cli("python -m evals.finetune")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # every input is checked before the checkpoint is read and long before training starts
    args.num_workers = clamp_workers(args.num_workers)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: must be at least 1")
    if args.batch_size < 2 or args.batch_size % 2:
        raise UserError(f"--batch-size {args.batch_size}: must be even and at least 2 (mixup/cutmix "
                        "pair samples)")
    ckpt = resolve_ckpt(args.ckpt)
    run = checked_run_dir(args.run, ckpt)
    spec = resolve_data(args.data, args.backend)
    timer = Timer()
    device, rank, world = init_distributed(args.device)
    torch.manual_seed(args.seed + rank)
    ck = load_mae(ckpt)
    big = ck.model.config["embed_dim"] > 768
    epochs = args.epochs or (50 if big else 100)
    blr = args.blr or (1e-3 if big else 5e-4)
    layer_decay = args.layer_decay or (1.0 if args.from_scratch
                                       else default_layer_decay(ck.model.config["embed_dim"]))
    drop_path = args.drop_path if args.drop_path is not None else (0.2 if big else 0.1)
    size = image_size_of(ck.model)
    val = open_split(args.data, "val", make_eval_loader, spec.backend, spec.val, size, args.batch_size,
                     False, device, args.num_workers, seed=args.seed)
    num_classes = val.num_classes
    batch = args.batch_size
    train, n_train, train_classes = _train_loader(args, spec, size, batch, device)
    check_same_classes(train_classes, val.classes, spec.train, spec.val)
    fitted = fit_batch(batch, n_train, world, spec.train, even=True)
    if fitted != batch:          # drop_last: a batch larger than the split trains 0 steps
        batch = fitted
        train, n_train, _ = _train_loader(args, spec, size, batch, device)
    tensor_aug = TensorAugment(device, args.reprob, num_ops=2 if args.rand_aug else 0) \
        if spec.backend == "ffcv" else None
    vit = build_vit(ck.model, num_classes, drop_path, pretrained=not args.from_scratch,
                    seed=args.seed)
    res = finetune(vit, train, val, num_classes, device, epochs, blr, layer_decay,
                   args.weight_decay, args.warmup_epochs, args.min_lr, args.smoothing,
                   args.mixup, args.cutmix, tensor_aug, args.eval_every)
    history = res.pop("history", None)
    kind = "finetune_scratch" if args.from_scratch else "finetune"
    require_steps(res["steps"], kind)
    settings = {**data_settings(args.data, spec, size, n_train, val.num_samples), "epochs": epochs,
                "warmup_epochs": args.warmup_epochs, "blr": blr, "lr": blr * batch * world / 256,
                "min_lr": args.min_lr, "weight_decay": args.weight_decay, "layer_decay": layer_decay,
                "drop_path": drop_path, "batch_size": batch * world, "mixup": args.mixup,
                "cutmix": args.cutmix, "smoothing": args.smoothing, "reprob": args.reprob,
                "rand_aug": args.rand_aug, "from_scratch": args.from_scratch, "seed": args.seed,
                "checkpoint": str(ck.path)}
    if history:
        settings["history"] = history
    write_result(run, ck.epoch, {"kind": kind, **res, "n_train": n_train, "n_val": val.num_samples,
                                 "seconds": timer(), "settings": settings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
