"""Loader benchmark: images/s of each back end beside the CPU's JPEG decode limit (and the GPU's).

    python -m pipeline.bench --data sample-imagenet          # ImageNet-sized synthetic JPEGs
    python -m pipeline.bench --data ../shared/data/imagenette --backends torch,ffcv,dali

What it prints, measured side by side in one run on the same files and settings:

* images/s of each back end (after warm-up batches, which include FFCV's JIT compile);
* the *decode limit*: full JPEG decode of the same files with PIL on one core
  (``Image.open().convert("RGB")``), times the cores the loaders use. It is the physical limit of
  a loader that decodes every full-size JPEG on the CPU; a back end can exceed it only by
  decoding fewer pixels (FFCV betons stored at ``--max-resolution`` below the originals, DALI's
  ROI decode of the random crop, libjpeg's DCT scaling);
* each back end's ratio to the torch baseline and to that limit, and whether the goals hold
  (best back end >= 2x torch and >= 80% of the limit);
* the same per CPU-second (process + threads + worker processes, via psutil): on a busy shared
  machine wall-clock rates fall with the load, images per CPU-second do not;
* with a GPU: DALI ``mixed`` (nvJPEG / hardware decoder) and torchvision batched nvJPEG
  ``decode_jpeg(device="cuda")`` + crop rates, and the MAE ViT-B/16 bf16 training step rate, so
  you can see whether the loader outruns the model.

Timings on a shared machine are noisy: compare the ratios printed by one run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import make_loader
from .loaders.files import list_images

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "data" / "bench"


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def resolve_split(data: str, split: str, sample_per_class: int) -> Path:
    """The image folder to benchmark: DATA/<split>, DATA itself, or the generated sample."""
    if data == "sample-imagenet":
        from .sample import make_sample_dataset
        root = CACHE / f"sample-imagenet-{sample_per_class}"
        if not (root / split).is_dir():
            _log(f"writing the ImageNet-sized sample dataset to {root} ({sample_per_class}/class) ...")
            make_sample_dataset(root, imagenet_size=True, train_per_class=sample_per_class,
                                val_per_class=max(1, sample_per_class // 5))
        return root / split
    p = Path(data)
    if (p / split).is_dir():
        return p / split
    if p.is_dir():
        return p
    raise SystemExit(f"--data {data}: not a folder (expected DIR/{split}/<class>/*.jpg or 'sample-imagenet')")


def beton_for(folder: Path, max_resolution: int | None, num_workers: int) -> Path:
    """Convert ``folder`` once (cached under data/bench/) with pipeline.build_ffcv; return the .beton."""
    from .build_ffcv import build
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    out = CACHE / f"ffcv-{folder.parent.name}-{folder.name}-{key}-r{max_resolution or 'orig'}"
    beton = out / f"{folder.name}.beton"
    if not beton.is_file():
        tmp_src = out / "src"
        tmp_src.mkdir(parents=True, exist_ok=True)
        link = tmp_src / folder.name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
        _log(f"converting {folder} -> {beton} (max_resolution={max_resolution}) ...")
        build(tmp_src, out, max_resolution=max_resolution, num_workers=num_workers)
    return beton


def cpu_seconds() -> float:
    """User+system CPU time of this process, its threads and its live children (loader workers).

    Rates per CPU-second do not depend on how busy a shared machine is, unlike wall-clock rates.
    """
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def pil_decode_rate(paths: list[str], seconds: float = 5.0) -> tuple[float, float]:
    """Full-image JPEG decodes per wall second and per CPU second on one core with PIL."""
    from PIL import Image
    for p in paths:  # warm the page cache: measure decoding, not the disk
        with open(p, "rb") as fh:
            fh.read()
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    while True:
        for p in paths:
            with Image.open(p) as im:
                im.convert("RGB").load()
            n += 1
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0), n / (cpu_seconds() - c0)


def loader_rate(loader, batches: int, warmup: int) -> tuple[float, float]:
    """Images per wall second and per CPU second over ``batches`` batches after ``warmup``."""
    seen, t0, c0, epoch = 0, None, None, 0
    while True:
        loader.set_epoch(epoch)
        for x, _ in loader:
            if t0 is None and warmup <= 0:
                if x.is_cuda:
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), cpu_seconds()
            elif t0 is not None:
                seen += x.shape[0]
                batches -= 1
                if batches == 0:
                    if x.is_cuda:
                        torch.cuda.synchronize()
                    return seen / (time.perf_counter() - t0), seen / (cpu_seconds() - c0)
            warmup -= 1
        epoch += 1


def mae_step_rate(batch_size: int, image_size: int, steps: int = 10) -> float:
    """Images/s of MAE ViT-B/16 forward+backward+AdamW step in bf16 autocast on the GPU."""
    from model import create_model
    m = create_model("mae_vit_base_patch16", norm_pix_loss=True, img_size=image_size).cuda()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    x = torch.randn(batch_size, 3, image_size, image_size, device="cuda")
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, _ = m(x, mask_ratio=0.75)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def run(args) -> dict:
    folder = resolve_split(args.data, args.split, args.sample_per_class)
    split = list_images(folder)
    common = dict(batch_size=args.batch_size, image_size=args.image_size, train=not args.eval,
                  num_workers=args.workers, seed=0)
    res = {"data": str(folder), "num_files": len(split.paths), "workers": args.workers,
           "batch_size": args.batch_size, "image_size": args.image_size, "train": not args.eval,
           "rates": {}, "notes": []}
    n_dec = min(len(split.paths), args.decode_files)
    step = max(1, len(split.paths) // n_dec)
    one_core, per_cpu = pil_decode_rate(split.paths[::step][:n_dec], args.decode_seconds)
    res["pil_decode_1core"] = one_core
    res["decode_limit"] = one_core * args.workers
    res["pil_decode_per_cpu_s"] = per_cpu
    res["rates_per_cpu_s"] = {}
    for backend in args.backends:
        try:
            path = beton_for(folder, args.max_resolution, args.workers) if backend == "ffcv" else folder
            loader = make_loader(backend, path, **common)
            res["rates"][backend], res["rates_per_cpu_s"][backend] = loader_rate(
                loader, args.batches, args.warmup)
            del loader
        except Exception as e:  # report and go on: one broken back end must not hide the others
            res["notes"].append(f"{backend}: failed ({type(e).__name__}: {e})")
        _log(f"{backend}: {res['rates'].get(backend, float('nan')):.0f} images/s")
    if torch.cuda.is_available():
        res["gpu"] = gpu_rates(folder, common, args)
    else:
        res["notes"].append("no CUDA GPU: DALI mixed, nvJPEG and the MAE step rate were not measured")
    return res


def gpu_rates(folder, common, args) -> dict:
    gpu = {"device": torch.cuda.get_device_name()}
    cuda = dict(common, device="cuda", num_workers=args.workers)
    tries = {"dali_mixed": lambda: make_loader("dali", folder, **cuda),
             "torch_nvjpeg_batched": lambda: make_loader("torch", folder, decode="batched", **cuda)}
    for name, build in tries.items():
        try:
            gpu[name] = loader_rate(build(), args.batches, args.warmup)[0]
        except Exception as e:
            gpu[name + "_error"] = f"{type(e).__name__}: {e}"
        _log(f"{name}: {gpu.get(name, float('nan')):.0f} images/s")
    try:
        gpu["mae_vit_b16_bf16_step"] = mae_step_rate(args.batch_size, args.image_size)
    except Exception as e:
        gpu["mae_vit_b16_bf16_step_error"] = f"{type(e).__name__}: {e}"
    return gpu


def report(res: dict) -> str:
    lines = [f"data: {res['data']} ({res['num_files']} files)  output {res['image_size']} px  "
             f"batch {res['batch_size']}  workers/cores {res['workers']}  "
             f"mode {'train (RRC+flip)' if res['train'] else 'eval (centre crop)'}",
             f"PIL full JPEG decode, 1 core: {res['pil_decode_1core']:.0f} images/s -> "
             f"decode limit x{res['workers']} cores: {res['decode_limit']:.0f} images/s", "",
             f"PIL full JPEG decode per CPU-second: {res['pil_decode_per_cpu_s']:.0f} images "
             "(CPU-second columns do not depend on how busy the machine is)", "",
             f"{'back end':<12}{'images/s':>10}{'x torch':>9}{'x limit':>9}"
             f"{'img/CPU-s':>11}{'x torch':>9}{'x PIL/CPU-s':>13}"]
    base_rate = res["rates"].get("torch")
    base_cpu = res["rates_per_cpu_s"].get("torch")
    for name, r in res["rates"].items():
        c = res["rates_per_cpu_s"][name]
        vs_t = f"{r / base_rate:.2f}" if base_rate else "-"
        vs_tc = f"{c / base_cpu:.2f}" if base_cpu else "-"
        lines.append(f"{name:<12}{r:>10.0f}{vs_t:>9}{r / res['decode_limit']:>9.2f}"
                     f"{c:>11.0f}{vs_tc:>9}{c / res['pil_decode_per_cpu_s']:>13.2f}")
    if res["rates"] and base_rate:
        best = max(res["rates"], key=res["rates"].get)
        r = res["rates"][best]
        ok_t, ok_l = r >= 2 * base_rate, r >= 0.8 * res["decode_limit"]
        lines += ["", f"best: {best}  >= 2x torch: {'yes' if ok_t else 'NO'} ({r / base_rate:.2f}x)  "
                      f">= 80% of decode limit: {'yes' if ok_l else 'NO'} ({r / res['decode_limit']:.0%})"]
        best_c = max(res["rates_per_cpu_s"], key=res["rates_per_cpu_s"].get)
        c = res["rates_per_cpu_s"][best_c]
        lines.append(f"per CPU-second: best {best_c} {c / base_cpu:.2f}x torch, "
                     f"{c / res['pil_decode_per_cpu_s']:.0%} of PIL full decode")
    if "gpu" in res:
        g = res["gpu"]
        lines += ["", f"GPU: {g['device']}"]
        for k, v in g.items():
            if k != "device":
                lines.append(f"  {k:<28}{v:>10.0f} images/s" if isinstance(v, float) else f"  {k}: {v}")
        step = g.get("mae_vit_b16_bf16_step")
        if step:
            best_gpu = max((v for k, v in g.items() if isinstance(v, float) and k != "mae_vit_b16_bf16_step"),
                           default=0.0)
            lines.append(f"  loader outruns the MAE ViT-B/16 step: {'yes' if best_gpu >= step else 'NO'}"
                         f" ({best_gpu:.0f} vs {step:.0f} images/s)")
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="sample-imagenet",
                    help="image folder (DIR or DIR/<split>) or 'sample-imagenet' (generated 500x375 JPEGs)")
    ap.add_argument("--split", default="train", help="split folder under --data (default: train)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="loader workers/threads = cores used (default: all cores)")
    ap.add_argument("--backends", default="torch,ffcv,dali", help="comma-separated back ends to time")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per back end")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first (FFCV compiles here)")
    ap.add_argument("--eval", action="store_true", help="time the eval transform instead of RRC+flip")
    ap.add_argument("--max-resolution", type=int, default=None,
                    help="FFCV beton max side (default: pipeline.build_ffcv's default; 0 = original size)")
    ap.add_argument("--sample-per-class", type=int, default=400, help="sample-imagenet images per class")
    ap.add_argument("--decode-files", type=int, default=200, help="files used for the PIL decode limit")
    ap.add_argument("--decode-seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.max_resolution is None:
        from .build_ffcv import DEFAULT_MAX_RESOLUTION
        args.max_resolution = DEFAULT_MAX_RESOLUTION
    args.max_resolution = args.max_resolution or None
    res = run(args)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
