"""Every model option trains under DDP: 2 gloo processes match 1 process with the same global batch.

The matrix runs the trainer's own pieces (``build_model``, ``build_loader`` with rank sharding,
``fit_pca_target``, ``build_optimizer``, ``distributed.wrap_ddp``, ``forward_backward``,
``optimizer_step``) for 3 steps of each option: one ``torchrun --nproc_per_node=2`` launch runs every
option in turn on one process group, one plain process runs them with the doubled batch, and the
final weights are compared. The issue's exact failure (the mask-token ablation through
``python -m trainer.pretrain`` under torchrun, dead at its second step) is checked end to end by
tests/test_multinode.py, which trains that option on two nodes. Both arms of the mask-token
ablation also get the same optimiser treatment for their mask tokens.

    python -m tests.test_ddp_options --out DIR [--batch B] OPTION ...   # the worker (torchrun or not)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model import create_model
from trainer.optim import param_groups

try:  # the worker runs as ``python -m tests.test_ddp_options``; pytest imports it as a package module
    from .test_trainer_helpers import ROOT, TINY, env, tiny_data  # noqa: F401
except ImportError:
    from tests.test_trainer_helpers import ROOT, TINY, env, tiny_data  # noqa: F401

PICO = dict(img_size=32, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2)

# option name -> model-section overrides (the trainer's model keys: constructor keywords + mask_ratio)
OPTIONS = {
    "mask_token_in_encoder": {"mask_token_in_encoder": True},
    "pixel": {"norm_pix_loss": False},
    "norm_pix": {"norm_pix_loss": True},  # the default: also the "random" sampler point
    "pca": {"target": "pca", "pca_dims": 16},
    "block": {"mask_sampler": "block"},
    "grid": {"mask_sampler": "grid"},
    "loss_on_all_patches": {"loss_on_all_patches": True},
    "ratio_0": {"mask_ratio": 0.0, "loss_on_all_patches": True},
    "ratio_0.9": {"mask_ratio": 0.9},
}
STEPS = 3
BLR = 3e-2  # lr 9.4e-4 at global batch 8: 3 Adam steps move weights ~3e-3, well past the tolerance
# Adam moves a weight by ~lr whatever its gradient's size, so where the true gradient is 0 (the
# attention key bias: softmax ignores a constant added to all logits) last-bit differences in the
# gradient (another summation order under all-reduce) become differences of ~lr between the runs.
# eps 1e-6 (default 1e-8) damps updates from gradients that small and leaves real ones (>= 1e-4) as they are.
EPS = 1e-6


# ----------------------------------------------------------------------------- worker
def _config(data: Path, option: str, batch: int):
    from trainer.config import from_dict
    d = json.loads(json.dumps(TINY))
    d["model"].update(OPTIONS[option])
    d["data"].update(train_path=str(data / "train"), val_path=str(data / "val"), batch_size=batch)
    d["optim"].update(blr=BLR, warmup_epochs=0, eps=EPS)
    d["run_dir"] = "unused"  # the worker writes no run directory
    return from_dict(d, f"option {option}")


def _train_option(cfg, info):
    """3 optimizer steps of the trainer's step code; returns (rank-mean losses, final state dict)."""
    from trainer import distributed
    from trainer.optim import build_optimizer, effective_batch, scaled_lr
    from trainer.pretrain import build_loader, build_model, fit_pca_target, forward_backward, optimizer_step
    torch.manual_seed(cfg.seed + info.rank)  # as the trainer: DDP broadcasts rank 0's initial weights
    model = build_model(cfg, info.device)
    if model.target == "pca":
        fit_pca_target(model, cfg, info)
    loader = build_loader(cfg, info)
    lr = scaled_lr(cfg.optim.blr, effective_batch(cfg.data.batch_size, cfg.optim.accum_steps, info.world_size))
    optimizer = build_optimizer(model, cfg.optim, lr, info.device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    net = distributed.wrap_ddp(model, info) if info.enabled else model
    net.train()
    loader.set_epoch(0)
    batches, losses = iter(loader), []
    for step in range(STEPS):
        loss, _ = forward_backward(net, batches, cfg, info, step, model.num_patches, contextlib.nullcontext, scaler)
        optimizer_step(optimizer, scaler, model, cfg.clip_grad)
        losses.append(distributed.mean_scalar(info, loss).item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("options", nargs="+")
    args = p.parse_args(argv)
    from trainer import distributed
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    info = distributed.init("cpu")
    try:
        for option in args.options:
            t0 = time.perf_counter()
            losses, state = _train_option(_config(Path(args.data), option, args.batch), info)
            if info.is_main:
                torch.save({"losses": losses, "model": state, "seconds": time.perf_counter() - t0},
                           Path(args.out) / f"{option}.pt")
    finally:
        distributed.cleanup(info)
    return 0


# ----------------------------------------------------------------------------- tests
def _launch(out: Path, data: Path, options: list[str], nproc: int, batch: int) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = launcher + ["-m", "tests.test_ddp_options", "--out", str(out), "--data", str(data),
                      "--batch", str(batch), *options]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _assert_same_training(one: dict, two: dict, label: str) -> None:
    # Float sums in another order (gloo all-reduce) differ in the last bits; Adam turns that into a small
    # fraction of lr where a gradient is near zero: the tolerance of tests/test_trainer_ddp.py.
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4, abs=1e-5), label
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-3, atol=2e-4,
                                   msg=lambda m: f"{label} {k}: {m}")


@pytest.fixture(scope="module")
def option_runs(tmp_path_factory, tiny_data):
    """Every option, 2 processes x 4 images and 1 process x 8, launched side by side."""
    root = tmp_path_factory.mktemp("ddp_options")
    procs = {n: _launch(root / name, tiny_data, list(OPTIONS), n, 8 // n) for n, name in ((1, "one"), (2, "two"))}
    for n, p in procs.items():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{n} process(es):\n{out[-6000:]}"
    return root


@pytest.mark.parametrize("option", list(OPTIONS))
def test_option_trains_under_ddp_like_one_process(option, option_runs):
    one = torch.load(option_runs / "one" / f"{option}.pt", weights_only=True)
    two = torch.load(option_runs / "two" / f"{option}.pt", weights_only=True)
    _assert_same_training(one, two, option)
    # the comparison means something: training moved the weights well past the tolerance
    torch.manual_seed(0)
    model_kw = {k: v for k, v in OPTIONS[option].items() if k != "norm_pix_loss"}
    init = create_model("mae_vit_pico_patch8_64", **PICO, **model_kw).state_dict()
    assert max((one["model"][k].float() - init[k].float()).abs().max().item() for k in init) > 2e-3


def _group_of(model, groups) -> dict[str, float]:
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    return {n: wd.get(id(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("decay_tokens", [False, True])
def test_both_ablation_arms_treat_their_mask_token_alike(decay_tokens):
    """encoder_mask_token used to be decayed while mask_token was not (TOKEN_NAMES missed it)."""
    arms = {}
    for in_encoder in (False, True):
        m = create_model("mae_vit_pico_patch8_64", mask_token_in_encoder=in_encoder, **PICO)
        arms[in_encoder] = _group_of(m, param_groups(m, 0.05, decay_tokens=decay_tokens))
    want = 0.05 if decay_tokens else 0.0
    assert arms[False]["mask_token"] == want and arms[True]["encoder_mask_token"] == want
    assert arms[True]["cls_token"] == arms[False]["cls_token"] == want
    assert arms[True]["mask_token"] is None  # frozen in the ablation (unused): not optimised at all


@pytest.mark.parametrize("decay_tokens", [False, True])
def test_ablation_optimizer_state_from_before_the_fix_still_loads(decay_tokens):
    """An ablation run checkpointed before the fix had the decoder mask_token in the optimiser and
    encoder_mask_token decayed; resuming it raised "loaded state dict contains a parameter group that
    doesn't match". Its state now moves, parameter by parameter, into the new groups."""
    from types import SimpleNamespace
    from trainer.optim import build_optimizer
    m = create_model("mae_vit_pico_patch8_64", mask_token_in_encoder=True, **PICO)
    # the grouping as trainer/optim.py made it before (written out here: the test must not share the code)
    old_tokens = ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "dist_token")
    groups = {0.0: [], 0.05: []}
    for name, p in m.named_parameters():
        if p.requires_grad or name == "mask_token":
            exempt = p.ndim <= 1 or name.endswith(".bias") or (name.split(".")[-1] in old_tokens and not decay_tokens)
            groups[0.0 if exempt else 0.05].append(p)
    old = torch.optim.AdamW([{"params": groups[0.0], "weight_decay": 0.0},
                             {"params": groups[0.05], "weight_decay": 0.05}], lr=1e-3, betas=(0.9, 0.95))
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    saved = old.state_dict()
    old_state = {id(p): old.state[p] for p in m.parameters() if p in old.state}
    cfg = SimpleNamespace(weight_decay=0.05, decay_tokens=decay_tokens, betas=[0.9, 0.95], eps=1e-8, fused=True)
    new = build_optimizer(m, cfg, 1e-3, torch.device("cpu"))
    with pytest.warns(UserWarning, match="encoder_mask_token"):
        new.load_state_dict(saved)
    for p in (m.encoder_mask_token, m.cls_token, m.decoder_pred.weight, m.blocks[0].norm1.bias):
        assert torch.equal(new.state[p]["exp_avg"], old_state[id(p)]["exp_avg"])
    assert m.mask_token not in new.state
    wd = _group_of(m, new.param_groups)
    assert wd["encoder_mask_token"] == wd["cls_token"] == (0.05 if decay_tokens else 0.0)
    new.step()  # and it trains on


def test_wrap_ddp_pays_for_unused_detection_only_when_a_parameter_is_unused():
    """find_unused_parameters costs a graph walk per step: off for every option as built, on only if
    the ablation's unused mask_token is made trainable again."""
    import os
    import torch.distributed as dist
    from trainer import distributed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        info = distributed.DistInfo(rank=0, world_size=1)
        for option, kw in OPTIONS.items():
            kw = {k: v for k, v in kw.items() if k != "norm_pix_loss"}
            assert not distributed.wrap_ddp(create_model("mae_vit_pico_patch8_64", **PICO, **kw), info) \
                .find_unused_parameters, option
        m = create_model("mae_vit_pico_patch8_64", mask_token_in_encoder=True, **PICO)
        m.mask_token.requires_grad_(True)
        assert distributed.wrap_ddp(m, info).find_unused_parameters
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(worker())


def test_the_trainer_uses_the_fused_adamw_kernel_on_cpu_unless_switched_off():
    """torch's CPU default is the per-tensor loop (benchmarks/adamw_cpu.py: 4-5x slower a step on the
    CPU presets' models); optim.fused=false gives it back. Both make the same update."""
    from types import SimpleNamespace

    from trainer.optim import build_optimizer
    steps = {}
    for fused in (True, False):
        torch.manual_seed(0)
        m = create_model("mae_vit_pico_patch8_64", **PICO)
        cfg = SimpleNamespace(weight_decay=0.05, decay_tokens=False, betas=[0.9, 0.95], eps=1e-8, fused=fused)
        opt = build_optimizer(m, cfg, 1e-3, torch.device("cpu"))
        assert all(bool(g.get("fused")) is fused for g in opt.param_groups)
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        steps[fused] = torch.cat([p.detach().flatten() for p in m.parameters()])
    torch.testing.assert_close(steps[True], steps[False], rtol=1e-6, atol=1e-7)
