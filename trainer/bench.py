"""Training throughput: the full loop (loader + model + optimiser) against the model alone.

    python -m trainer.bench                       # CPU: the demo config, side by side
    python -m trainer.bench --gpu --ffcv data/imagenet_ffcv/train.beton --dali /data/imagenet/train

Both cases run the trainer's own step (``trainer.pretrain.forward_backward`` + ``optimizer_step``,
including the per-step ``loss.item()`` the loop does); "model alone" feeds it a few batches that
were loaded beforehand and cycled from memory. They alternate (model, loop, model, loop, ...) and
the medians are compared, because on a shared machine only ratios measured side by side mean
anything. ratio = loop img/s / model img/s (median over back-to-back pairs): the share of the
model's speed the loader lets through; also per CPU second of the process (robust to other jobs).
Goal: >= 0.95 on CPU for the demo config; on GPU, data-wait under 5% for ViT-B/16 at batch 256.

The GPU part (``--gpu``, skipped without CUDA) measures ViT-B/16 (224 px, batch 256, bf16) with
the FFCV and the DALI back ends, and reports data-wait share and peak GPU memory.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pipeline.build_ffcv import build
from pipeline.sample import make_sample_dataset

from .config import load_config
from .distributed import DistInfo
from .optim import build_optimizer, scaled_lr
from .pretrain import _amp, _setup_runtime, build_loader, build_model, forward_backward, optimizer_step


def _cycle_loader(loader):
    """Batches forever, epoch after epoch (what the training loop sees)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def _timed_steps(model, optimizer, batches, cfg, info, steps, amp_ctx, scaler, start_step=0):
    """(images per wall second, images per CPU second of this process, data-wait share).

    CPU seconds count every thread of the process (torch's and the loader's), so on a shared
    machine the per-CPU-second rate is what other jobs disturb least, and it still charges the
    loader for the cores it takes from the model."""
    eff = cfg.data.batch_size * cfg.optim.accum_steps
    wait_total = 0.0
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for s in range(steps):
        loss, wait = forward_backward(model, batches, cfg, info, start_step + s, model.num_patches, amp_ctx, scaler)
        loss.item()  # the loop syncs once per step for the non-finite check
        optimizer_step(optimizer, scaler, model, cfg.clip_grad)
        wait_total += wait
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return steps * eff / dt, steps * eff / max(cpu, 1e-9), wait_total / dt


def measure(cfg, steps: int, rounds: int, warmup: int, preload: int = 4) -> dict:
    """Alternate model-alone and full-loop measurements for one config; medians and the ratio."""
    device = torch.device("cuda") if cfg.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    info = DistInfo(device=device)
    _setup_runtime(cfg, device)
    amp_ctx, amp_dtype, scaler = _amp(cfg, device)
    model = build_model(cfg, device)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(model, cfg.optim, scaled_lr(cfg.optim.blr, cfg.data.batch_size), device)
    t_build = time.perf_counter()
    loader = build_loader(cfg, info)
    stream = _cycle_loader(loader)
    # cloned: a uint8 FFCV batch is a view of FFCV's buffer, valid only until the next one is drawn
    cached = [(x.clone(), y.clone()) for x, y in itertools.islice(stream, preload)]
    loader_setup = time.perf_counter() - t_build
    memory = itertools.cycle(cached)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _timed_steps(model, optimizer, memory, cfg, info, warmup, amp_ctx, scaler)  # compile, allocator, caches
    _timed_steps(model, optimizer, stream, cfg, info, warmup, amp_ctx, scaler)
    alone, loop, waits, ratios, cpu_ratios, alone_cpu, loop_cpu = [], [], [], [], [], [], []
    for r in range(rounds):
        a, a_cpu, _ = _timed_steps(model, optimizer, memory, cfg, info, steps, amp_ctx, scaler)
        b, b_cpu, wait = _timed_steps(model, optimizer, stream, cfg, info, steps, amp_ctx, scaler)
        alone.append(a), loop.append(b), waits.append(wait), alone_cpu.append(a_cpu), loop_cpu.append(b_cpu)
        ratios.append(b / a)
        cpu_ratios.append(b_cpu / a_cpu)
    # The loader by itself, for the "loader rate beside consumption rate" column.
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        images, _ = next(stream)
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    loader_ips = n / (time.perf_counter() - t0)
    out = {
        "model": cfg.model.name, "backend": cfg.data.backend, "device": device.type,
        "precision": str(amp_dtype or torch.float32).replace("torch.", ""), "batch": cfg.data.batch_size,
        "image_size": cfg.data.image_size, "threads": torch.get_num_threads(), "steps_per_round": steps,
        "rounds": rounds, "model_alone_img_s": statistics.median(alone), "full_loop_img_s": statistics.median(loop),
        "loader_alone_img_s": loader_ips, "data_wait": statistics.median(waits),
        "loader_setup_s": loader_setup, "all_model_alone": alone, "all_full_loop": loop,
    }
    # each round's loop / model pair was measured back to back: the median of the pair ratios is
    # far less sensitive to the machine's load changing between rounds than a ratio of medians
    out["ratio"] = statistics.median(ratios)
    out["ratio_cpu"] = statistics.median(cpu_ratios)
    out["model_alone_img_cpu_s"] = statistics.median(alone_cpu)
    out["full_loop_img_cpu_s"] = statistics.median(loop_cpu)
    out["all_ratios"], out["all_ratios_cpu"] = ratios, cpu_ratios
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del loader, stream
    return out


def _ensure_demo_data(cfg) -> None:
    """Build the sample dataset and its .beton files when the demo config's data is missing."""
    train = Path(cfg.data.train_path)
    if cfg.data.backend != "ffcv" or train.exists():
        return
    src = Path("data/sample")
    if not (src / "classes.tsv").exists():
        print(f"bench: generating the sample dataset in {src}", file=sys.stderr)
        make_sample_dataset(src)
    print(f"bench: building {train.parent} from {src}", file=sys.stderr)
    build(src, train.parent)


def _row(r: dict) -> str:
    mem = f"{r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else "-"
    return (f"{r['model']:<24} {r['backend']:<5} {r['device']:<4} {r['precision']:<8} {r['batch']:>5} "
            f"{r['model_alone_img_s']:>10.0f} {r['full_loop_img_s']:>10.0f} {r['ratio']:>6.3f} "
            f"{100 * r['data_wait']:>6.1f}% {r['loader_alone_img_s']:>10.0f} {mem:>9} "
            f"{r['model_alone_img_cpu_s']:>9.0f} {r['full_loop_img_cpu_s']:>9.0f} {r['ratio_cpu']:>8.3f}")


HEADER = (f"{'model':<24} {'data':<5} {'dev':<4} {'prec':<8} {'batch':>5} {'model img/s':>10} "
          f"{'loop img/s':>10} {'ratio':>6} {'wait':>7} {'loader img/s':>10} {'peak mem':>9} "
          f"{'model/cpu-s':>9} {'loop/cpu-s':>9} {'cpu ratio':>8}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml", help="config for the CPU comparison")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per measurement round")
    p.add_argument("--rounds", type=int, default=6, help="alternating model/loop rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before measuring")
    p.add_argument("--gpu", action="store_true", help="also run the GPU cases (needs CUDA)")
    p.add_argument("--ffcv", help="GPU case: ImageNet train .beton for the FFCV back end")
    p.add_argument("--dali", help="GPU case: ImageNet train folder for the DALI back end")
    p.add_argument("--gpu-model", default="mae_vit_base_patch16")
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=8, help="GPU case: loader workers")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for the CPU case")
    args = p.parse_args(argv)

    results = []
    cfg = load_config(args.config, ["device=cpu", "compile=false", *args.overrides])
    _ensure_demo_data(cfg)
    print(HEADER)
    r = measure(cfg, args.steps, args.rounds, args.warmup)
    results.append(r)
    print(_row(r), flush=True)
    if args.gpu:
        if not torch.cuda.is_available():
            print("GPU cases skipped: no CUDA device")
        for backend, path in (("ffcv", args.ffcv), ("dali", args.dali)):
            if not torch.cuda.is_available():
                break
            if not path:
                print(f"GPU case {backend} skipped: pass --{backend} PATH")
                continue
            gcfg = load_config(None, [
                "device=cuda", "precision=bf16", f"model.name={args.gpu_model}", "data.image_size=224",
                f"data.batch_size={args.gpu_batch}", f"data.backend={backend}", f"data.train_path={path}",
                f"data.num_workers={args.workers}", "epochs=800", "optim.warmup_epochs=40",
                *(["data.options={decoder: mixed}"] if backend == "dali" else [])])
            r = measure(gcfg, args.steps, args.rounds, max(args.warmup, 10))
            results.append(r)
            print(_row(r), flush=True)
    cpu = results[0]
    print(f"\nCPU demo: full loop {cpu['full_loop_img_s']:.0f} img/s vs model alone {cpu['model_alone_img_s']:.0f} "
          f"img/s: ratio {cpu['ratio']:.3f} wall-clock, {cpu['ratio_cpu']:.3f} per CPU second (goal >= 0.95), "
          f"data wait {100 * cpu['data_wait']:.1f}%\nper-round ratios (wall): "
          + " ".join(f"{x:.2f}" for x in cpu["all_ratios"])
          + "; (cpu): " + " ".join(f"{x:.2f}" for x in cpu["all_ratios_cpu"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
