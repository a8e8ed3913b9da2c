"""Unit checks of the trainer's pieces: schedule, optimiser groups, masking noise, checkpoint files."""
import errno
import math
import random
import warnings

import numpy as np
import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.noise import micro_batch_rows, step_noise
from trainer.optim import build_optimizer, param_groups, scaled_lr
from common.schedule import lr_at
from trainer.config import load_config


def test_schedule_warmup_then_half_cosine():
    kw = dict(lr=1.0, min_lr=0.1, warmup_epochs=4, epochs=20)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(2, **kw) == pytest.approx(0.5)  # linear warm-up, per fractional epoch
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(12, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_at(20, **kw) == pytest.approx(0.1)
    values = [lr_at(e / 10, **kw) for e in range(40, 201)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warm-up
    assert lr_at(7.3, **kw) == lr_at(7.3, **kw)  # pure


def test_lr_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)


def test_param_groups_exempt_biases_norms_and_tokens():
    from model import create_model
    m = create_model("mae_vit_pico_patch8_64", img_size=32)
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay, decay = param_groups(m, 0.05)
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"cls_token", "mask_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= nd
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "decoder_pred.weight"} <= d
    assert "pos_embed" not in nd | d  # frozen sin-cos tables are not optimised at all
    assert all(p.ndim > 1 for p in decay["params"])
    official = {names[id(p)] for p in param_groups(m, 0.05, decay_tokens=True)[1]["params"]}
    assert {"cls_token", "mask_token"} <= official
    opt = build_optimizer(m, load_config(None).optim, 1e-3, torch.device("cpu"))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_noise_rows_follow_samples_across_layouts():
    """Global row of rank r's j-th sample in micro-batch m = m*W*B + r + W*j (interleaved sharding)."""
    L, B = 16, 4
    one = step_noise(0, 7, 2 * B, L, torch.device("cpu"))          # 1 process, batch 2B
    ranks = [micro_batch_rows(one, 0, 1, r, 2, B) for r in range(2)]  # 2 processes, batch B
    interleaved = torch.stack(ranks, dim=1).reshape(2 * B, L)
    assert torch.equal(interleaved, one)
    accum = [micro_batch_rows(one, m, 2, 0, 1, B) for m in range(2)]  # 1 process, accum 2
    assert torch.equal(torch.cat(accum), one)
    assert torch.equal(step_noise(0, 7, 8, L, torch.device("cpu")), one)  # pure in (seed, step)
    assert not torch.equal(step_noise(0, 8, 8, L, torch.device("cpu")), one)


def test_atomic_save_checksum_fallback_prune_and_milestones(tmp_path):
    d = tmp_path / "checkpoints"
    paths = [ckpt.save_atomic({"step": s, "w": torch.full((3,), float(s))}, d / ckpt.checkpoint_name(s, s))
             for s in (1, 2, 3)]
    assert not list(d.glob(".*tmp*"))  # no temporaries left behind
    ckpt.add_milestone(paths[0], 1, 1)
    assert ckpt.verify(paths[2]) is None
    state, path = ckpt.load_latest(d)
    assert path == paths[2] and state["step"] == 3
    # flip one byte of the newest file: detected, the previous one is used, with a warning
    raw = bytearray(paths[2].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    paths[2].write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"ckpt-e0003-s00000003.pth is corrupt: checksum mismatch"):
        state, path = ckpt.load_latest(d)
    assert state["step"] == 2
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_file(paths[2])
    removed = ckpt.prune(d, keep_last=1)
    assert set(removed) == set(paths[:2])
    names = sorted(p.name for p in d.glob("*.pth"))
    assert names == ["ckpt-e0003-s00000003.pth", "milestone-e0001-s00000001.pth"]
    assert ckpt.load_file(d / "milestone-e0001-s00000001.pth")["step"] == 1  # milestone outlives pruning


def test_rng_state_roundtrip_is_weights_only_safe(tmp_path):
    dev = torch.device("cpu")
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = ckpt.rng_state(dev)
    ckpt.save_atomic({"rng": [state]}, tmp_path / "r.pth")
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    loaded = torch.load(tmp_path / "r.pth", weights_only=True)["rng"][0]
    ckpt.set_rng_state(loaded, dev)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_milestone_and_final_are_copies_where_hard_links_fail(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    path = ckpt.save_atomic({"step": 4, "w": torch.ones(3)}, d / ckpt.checkpoint_name(2, 4))

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")
    monkeypatch.setattr(ckpt.os, "link", no_links)
    milestone = ckpt.add_milestone(path, 2, 4)
    final = ckpt.link_as(path, "final.pth")
    for p in (milestone, final):
        assert ckpt.verify(p) is None and ckpt.load_file(p)["step"] == 4
        assert (d / (p.name + ".sha256")).read_text().endswith(f"  {p.name}\n")  # sha256sum -c format
    assert not milestone.samefile(path) and not final.samefile(path)
    assert not list(d.glob(".*"))  # no temporaries left behind
