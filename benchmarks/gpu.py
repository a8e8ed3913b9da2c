"""GPU check with nothing but torch, torchvision, timm and numpy: can GPU JPEG decode feed MAE ViT-B/16?

    python -m benchmarks.gpu                       # on the GPU box: JSON to stdout, summary to stderr
    python -m benchmarks.gpu --json gpu.json --data /imagenet/train   # real JPEGs instead of the sample
    python -m benchmarks.gpu --tiny                # tiny sizes; CPU when there is no GPU (the test runs this)

What it measures, each after warm-up, side by side in one process:

1. ``decode``: torchvision batched JPEG decode on the GPU (``decode_jpeg(list, device="cuda")``,
   nvJPEG) + RandomResizedCrop(224, scale 0.2-1, bicubic, antialias) + flip per image (the
   project's ``augment``), stacked as a uint8 batch, then normalised on the GPU
   (``pipeline.to_model_input``): images/s. Input: ImageNet-sized JPEGs (500x375, ~110 KB, the
   project's sample, encoded in memory) or the files under ``--data``.
2. ``step_sdpa_bf16``: the MAE ViT-B/16 training step (forward, backward, fused AdamW) in bf16
   autocast with ``scaled_dot_product_attention`` (the project's model): images/s.
3. ``step_explicit_fp16``: the same model with timm's explicit attention (``q @ k^T``, softmax,
   ``@ v``: what the official MAE code runs) in fp16 autocast with a GradScaler (the official
   recipe): images/s, and the speed-up of 2. over it.
4. ``loop``: decode + crop + normalise + the bf16 step, one after the other on one stream, and
   the share of its time spent on data; plus ``decode / step``: whether the decoder outruns the step.

It imports only torch, torchvision, timm, numpy (with PIL from torchvision) and the project's
``model`` and ``pipeline.loaders.transforms`` / ``pipeline.sample`` modules, which need no more
(``tests/test_gpu_bench.py`` runs it with ffcv, DALI, zarr, gradio and plotly made unimportable).
The whole run stays under ``--budget`` seconds (default 420): a part that would not fit is
skipped and says so in ``notes``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from model import create_model
from pipeline.loaders.transforms import augment, to_model_input
from pipeline.sample import render


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def sample_jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """``count`` JPEGs of the project's sample (``size`` = (width, height)), encoded in memory at q90."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(render(i % 10, rng, size)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def folder_jpegs(root: Path, count: int) -> list[bytes]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"--data {root}: no .jpg/.jpeg files found")
    step = max(1, len(files) // count)
    return [p.read_bytes() for p in files[::step][:count]]


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def decode_batch(blobs: list[torch.Tensor], device, image_size: int, gen: torch.Generator) -> torch.Tensor:
    """Encoded JPEGs -> uint8 N x 3 x S x S on ``device``: batched decode, then RRC + flip per image."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    return torch.stack([augment(img, image_size, True, gen) for img in images])


def decode_rate(blobs, device, image_size, batch_size, batches, warmup) -> dict:
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    batch_list = [[tensors[(i * batch_size + k) % len(tensors)] for k in range(batch_size)]
                  for i in range(batches + warmup)]
    timer = Timer(device)
    for b in batch_list[:warmup]:
        to_model_input(decode_batch(b, device, image_size, gen), device)
    with timer:
        for b in batch_list[warmup:]:
            x = to_model_input(decode_batch(b, device, image_size, gen), device)
    return {"images_per_s": batches * batch_size / timer.seconds, "batches": batches,
            "mean_file_kib": float(np.mean([len(b) for b in blobs]) / 1024),
            "output": list(x.shape), "dtype": str(x.dtype)}


def build_model(name: str, image_size: int, device, explicit_attention: bool):
    m = create_model(name, norm_pix_loss=True, img_size=image_size).to(device)
    if explicit_attention:
        # timm's Attention with fused_attn False computes softmax(q k^T * scale) v explicitly, as the
        # official MAE code (timm 0.3.2 blocks) does; the project's lean forward then steps aside
        for mod in m.modules():
            if hasattr(mod, "fused_attn"):
                mod.fused_attn = False
    return m


def step_rate(name, image_size, batch_size, device, steps, warmup, precision: str, explicit: bool) -> dict:
    """Images/s of forward + backward + fused AdamW for one MAE model and precision."""
    m = build_model(name, image_size, device, explicit)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu":  # CPU bf16/fp16 autocast is slow without AMX: the smoke test runs fp32
        dtype, precision = torch.float32, f"fp32 (CPU; {precision} on GPU)"
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def one():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _, _ = m(x, mask_ratio=0.75)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        one()
    timer = Timer(device)
    with timer:
        for _ in range(steps):
            loss = one()
    out = {"images_per_s": steps * batch_size / timer.seconds, "precision": precision,
           "attention": "explicit (official)" if explicit else "sdpa", "loss": float(loss.detach())}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del m, opt
    return out


def loop_rate(blobs, name, image_size, batch_size, device, steps, warmup) -> dict:
    """Decode + crop + normalise + bf16 step, sequentially: what a GPU-decoding trainer gets."""
    m = build_model(name, image_size, device, explicit_attention=False)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    timer, data = Timer(device), 0.0
    total = None
    for i in range(warmup + steps):
        if i == warmup:
            timer.sync()
            total, data = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        b = [tensors[(i * batch_size + k) % len(tensors)] for k in range(batch_size)]
        x = to_model_input(decode_batch(b, device, image_size, gen), device)
        timer.sync()
        data += time.perf_counter() - t0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _, _ = m(x, mask_ratio=0.75)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    timer.sync()
    seconds = time.perf_counter() - total
    return {"images_per_s": steps * batch_size / seconds, "data_share": data / seconds}


def run(args) -> dict:
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    tiny = args.tiny
    size = args.image_size or (64 if tiny else 224)
    batch = args.batch_size or (8 if tiny else 256)
    model_name = args.model or ("mae_vit_micro_patch8_64" if tiny else "mae_vit_base_patch16")
    steps, warmup = (args.steps or (2 if tiny else 20)), (1 if tiny else 5)
    res = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
           "model": model_name, "image_size": size, "batch_size": batch, "tiny": tiny, "notes": [],
           "load_average_start": os.getloadavg()}
    res["torchvision"] = torchvision.__version__
    if not cuda:
        res["notes"].append("no CUDA GPU: decode and steps ran on the CPU (a smoke test, not a GPU number)")
    n_files = args.files or (16 if tiny else 512)
    jpeg_size = (128, 96) if tiny else (500, 375)
    blobs = folder_jpegs(Path(args.data), n_files) if args.data else sample_jpegs(n_files, jpeg_size)
    res["input"] = args.data or f"pipeline.sample ImageNet-sized JPEGs {jpeg_size[0]}x{jpeg_size[1]} (q90, in memory)"
    _log(f"benchmarks.gpu: {len(blobs)} JPEGs ready; device {res['device']}")

    def left():
        return args.budget - (time.perf_counter() - t_start)

    parts = [
        ("decode", lambda: decode_rate(blobs, device, size, batch, batches=max(2, steps // 2), warmup=warmup)),
        ("step_sdpa_bf16", lambda: step_rate(model_name, size, batch, device, steps, warmup, "bf16", False)),
        ("step_explicit_fp16", lambda: step_rate(model_name, size, batch, device, steps, warmup, "fp16", True)),
        ("loop", lambda: loop_rate(blobs, model_name, size, batch, device, max(2, steps // 2), warmup)),
    ]
    for name, part in parts:
        if left() < args.budget * 0.15:
            res["notes"].append(f"{name}: skipped, {left():.0f} s of the {args.budget:.0f} s budget left")
            continue
        try:
            res[name] = part()
            _log(f"  {name}: {res[name]['images_per_s']:.0f} images/s")
        except Exception as e:  # report and go on: one failing part must not hide the others
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            _log(f"  {name}: failed ({res[name]['error']})")
        if cuda:
            torch.cuda.empty_cache()
    rate = {k: res[k].get("images_per_s") for k in ("decode", "step_sdpa_bf16", "step_explicit_fp16", "loop")
            if isinstance(res.get(k), dict)}
    if rate.get("step_sdpa_bf16") and rate.get("step_explicit_fp16"):
        res["sdpa_bf16_speedup_over_explicit_fp16"] = rate["step_sdpa_bf16"] / rate["step_explicit_fp16"]
    if rate.get("decode") and rate.get("step_sdpa_bf16"):
        res["decode_over_step"] = rate["decode"] / rate["step_sdpa_bf16"]
        res["decoder_outruns_step"] = rate["decode"] >= rate["step_sdpa_bf16"]
    res["seconds"] = time.perf_counter() - t_start
    res["load_average_end"] = os.getloadavg()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true",
                    help="tiny sizes (64 px, batch 8, mae_vit_micro_patch8_64, 16 small JPEGs; fp32 on CPU); "
                         "CPU without a GPU")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    ap.add_argument("--data", help="folder of JPEGs to decode instead of the generated sample (default: sample)")
    ap.add_argument("--files", type=int, default=0, help="JPEGs to use (default: 512; --tiny 16)")
    ap.add_argument("--model", default="", help="model name (default: mae_vit_base_patch16; --tiny mae_vit_micro_patch8_64)")
    ap.add_argument("--image-size", type=int, default=0, help="output side (default: 224; --tiny 64)")
    ap.add_argument("--batch-size", type=int, default=0, help="(default: 256; --tiny 8)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per part (default: 20; --tiny 2)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds for the whole run; parts that would not fit are skipped (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the JSON here (default: stdout only)")
    args = ap.parse_args(argv)
    res = run(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
