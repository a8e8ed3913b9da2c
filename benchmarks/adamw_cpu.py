"""AdamW step on CPU: torch's per-tensor loop (its CPU default), ``foreach`` and the fused kernel.

Why: on CPU, torch turns ``foreach`` on for CUDA tensors only, so ``torch.optim.AdamW`` runs a dozen
small ops per parameter tensor; a small MAE has about a hundred tensors, and the loop became a visible
share of a CPU training step. ``trainer.optim.build_optimizer`` uses ``fused=True`` on CPU as well.
This measures the three side by side, interleaved (best of the repeats), on the models the CPU
presets train, with the same gradients, and prints the ratios and the load average.

Run: ``python -m benchmarks.adamw_cpu [--models NAME ...] [--steps 30] [--repeats 3]``.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from model import create_model

MODES = {"loop (CPU default)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_ms(params: list[torch.Tensor], kwargs: dict, steps: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05, **kwargs)
    for _ in range(3):
        opt.step()
    t = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mae_vit_nano_patch8_64", "mae_vit_micro_patch8_64"],
                    help="registry names")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per timing")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best is kept)")
    args = ap.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name in args.models:
        torch.manual_seed(0)
        params = [p for p in create_model(name).parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        best = {mode: float("inf") for mode in MODES}
        for _ in range(args.repeats):
            for mode, kwargs in MODES.items():
                best[mode] = min(best[mode], step_ms(params, kwargs, args.steps))
        n = sum(p.numel() for p in params)
        cells = ", ".join(f"{mode} {ms:.2f} ms" for mode, ms in best.items())
        print(f"{name}: {len(params)} tensors, {n / 1e6:.2f}M params: {cells}; "
              f"fused is {best['loop (CPU default)'] / best['fused']:.1f}x the loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
