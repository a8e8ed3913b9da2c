"""Unit tests of the eval building blocks: LARS, layer-wise lr decay, kNN, the cached probe."""
import math

import pytest
import torch
import torch.nn as nn

from evals.finetune import layer_decay_groups
from evals.knn import knn_classify
from evals.linprobe import ProbeHead, train_probe_on_features
from evals.linprobe import lars as LARS


# ----------------------------------------------------------------------------- LARS
def test_lars_matrix_update_is_trust_ratio_scaled_and_vector_is_plain_sgd():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(4))
    lr, wd, eta, mom = 0.5, 0.0, 0.001, 0.9      # the protocol's weight decay: MAE's LARS exactly
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, trust_coefficient=eta)
    gw, gb = torch.randn(4, 3) * 7, torch.randn(4)
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    d = gw + wd * w0
    expected_w = w0 - lr * d * (eta * w0.norm() / d.norm())
    assert torch.allclose(w, expected_w, atol=1e-6)
    # 1-D: no weight decay, no trust ratio
    assert torch.allclose(b, b0 - lr * gb, atol=1e-6)
    # update size of the matrix is lr * eta * ||w|| whatever the gradient's scale
    assert math.isclose(float((w.detach() - w0).norm()), lr * eta * float(w0.norm()), rel_tol=1e-4)
    # second step: momentum accumulates the scaled update
    w1, b1 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    d1 = gw + wd * w1
    mu = mom * (d * (eta * w0.norm() / d.norm())) + d1 * (eta * w1.norm() / d1.norm())
    assert torch.allclose(w, w1 - lr * mu, atol=1e-6)
    assert torch.allclose(b, b1 - lr * (mom * gb + gb), atol=1e-6)


def test_lars_weight_decay_on_matrices_only_with_timms_trust_ratio():
    # timm's Lars divides by ||g|| + wd * ||w|| (You et al.), MAE's by ||g + wd * w||
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    lr, wd, eta = 0.5, 0.1, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, trust_coefficient=eta)
    gw, gb = torch.randn(4, 3) * 7, torch.randn(4)
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    ratio = eta * w0.norm() / (gw.norm() + wd * w0.norm())
    assert torch.allclose(w, w0 - lr * (gw + wd * w0) * ratio, atol=1e-6)
    assert torch.allclose(b, b0 - lr * gb, atol=1e-6)     # 1-D: no weight decay, no trust ratio


def test_lars_update_independent_of_gradient_scale_and_zero_weight_falls_back():
    w1, w2 = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    z = nn.Parameter(torch.zeros(2, 2))
    o1, o2 = LARS([w1], lr=1.0), LARS([w2], lr=1.0)
    oz = LARS([z], lr=1.0, trust_coefficient=0.001)
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    w1.grad, w2.grad, z.grad = g.clone(), 1000 * g.clone(), g.clone()
    o1.step(), o2.step(), oz.step()
    assert torch.allclose(w1, w2)
    assert torch.allclose(z, -g)      # ||w|| = 0: ratio 1, plain SGD step


def test_lars_trains_a_toy_regression():
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = x @ torch.randn(5, 1) + 0.3
    lin = nn.Linear(5, 1)
    opt = LARS(lin.parameters(), lr=1.0, trust_coefficient=0.02)
    first = None
    for _ in range(300):
        loss = ((lin(x) - y) ** 2).mean()
        first = first or float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first


# ----------------------------------------------------------------------------- lr decay
def _small_vit(global_pool="avg"):
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2,
                             num_classes=5, global_pool=global_pool,
                             fc_norm=True if global_pool == "avg" else None)


def _scales_and_decays(model, weight_decay, decay):
    names = {id(p): n for n, p in model.named_parameters()}
    groups = layer_decay_groups(model, weight_decay, decay)
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    wd = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    return scale, wd


def test_layer_decay_scales_follow_mae_and_no_decay_on_1d_and_tokens():
    model = _small_vit()
    decay, L = 0.5, 3
    scale, wd = _scales_and_decays(model, 0.05, decay)
    assert set(scale) == {n for n, _ in model.named_parameters()}
    for n in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        assert scale[n] == decay ** (L + 1)
    for i in range(L):
        assert scale[f"blocks.{i}.attn.qkv.weight"] == decay ** (L - i)
        assert scale[f"blocks.{i}.norm1.weight"] == decay ** (L - i)
    for n in ("fc_norm.weight", "head.weight", "head.bias"):
        assert scale[n] == 1.0
    assert wd["cls_token"] == wd["pos_embed"] == wd["head.bias"] == wd["blocks.0.norm1.weight"] == 0
    assert wd["blocks.1.mlp.fc1.weight"] == wd["head.weight"] == wd["patch_embed.proj.weight"] == 0.05


def test_layer_decay_of_the_finetuned_vit_follows_mae():
    # timm's groups equal MAE's when the ViT has no real final norm (MAE: with the head; timm: a
    # layer of its own): build_vit's global_pool='avg' makes it an Identity, fc_norm is the head's
    from evals.finetune import build_vit
    from model import create_model
    vit = build_vit(create_model("mae_vit_micro_patch8_64"), 10, 0.1)
    L = len(vit.blocks)
    assert not [n for n, _ in vit.named_parameters() if n.startswith("norm.")]
    scale, wd = _scales_and_decays(vit, 0.05, 0.65)
    assert scale["cls_token"] == scale["patch_embed.proj.weight"] == pytest.approx(0.65 ** (L + 1))
    assert scale[f"blocks.{L - 1}.mlp.fc2.weight"] == pytest.approx(0.65)
    assert scale["fc_norm.weight"] == scale["head.weight"] == 1.0
    assert wd["pos_embed"] == wd["fc_norm.weight"] == 0 and wd["head.weight"] == 0.05


# ----------------------------------------------------------------------------- kNN
def _clusters(n_per, centres, noise, seed):
    g = torch.Generator().manual_seed(seed)
    feats = [c + noise * torch.randn(n_per, c.numel(), generator=g) for c in centres]
    labels = [torch.full((n_per,), i) for i in range(len(centres))]
    return torch.cat(feats), torch.cat(labels)


def test_knn_on_separated_clusters_is_perfect_and_on_noise_is_chance():
    centres = torch.eye(8)[:6] * 5          # 6 orthogonal directions in 8-D
    xtr, ytr = _clusters(30, centres, 0.3, 0)
    xte, yte = _clusters(20, centres, 0.3, 1)
    res = knn_classify(xtr, ytr, xte, yte, k=20, T=0.07, num_classes=6)
    assert res == {"top1": 1.0, "top5": 1.0}


def test_knn_known_accuracy_with_half_of_the_test_set_mislabelled():
    centres = torch.eye(4) * 3
    xtr, ytr = _clusters(25, centres, 0.2, 0)
    xte, yte = _clusters(10, centres, 0.2, 1)
    yte_wrong = yte.clone()
    yte_wrong[::2] = (yte_wrong[::2] + 1) % 4          # exactly half now disagree with the cluster
    res = knn_classify(xtr, ytr, xte, yte_wrong, k=5, T=0.07, num_classes=4)
    assert res["top1"] == pytest.approx(0.5)
    assert res["top5"] == 1.0                           # 4 classes: top-5 covers all


# ----------------------------------------------------------------------------- linear probe
def test_probe_head_is_bn_without_affine_and_small_init():
    h = ProbeHead(32, 7)
    assert isinstance(h[0], nn.BatchNorm1d) and not h[0].affine and h[0].eps == 1e-6
    assert h[1].weight.std() < 0.02 and h[1].bias.abs().sum() == 0


def test_cached_linear_probe_reaches_100_percent_on_separable_features():
    # five clusters far apart in 32-D, shifted and scaled (BatchNorm must absorb that)
    centres = torch.randn(5, 32, generator=torch.Generator().manual_seed(0)) * 4 + 2
    xtr, ytr = _clusters(120, centres, 1.0, 1)
    xva, yva = _clusters(40, centres, 1.0, 2)
    res = train_probe_on_features(xtr, ytr, xva, yva, num_classes=5, epochs=90, batch_size=256,
                                  warmup_epochs=10)
    assert res["train_top1"] == 1.0 and res["top1"] == 1.0 and res["top5"] == 1.0
    assert 0 <= res["loss"] < 0.1


def test_cached_linear_probe_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 8, generator=g)
    y = torch.randint(0, 4, (600,), generator=g)
    res = train_probe_on_features(x[:400], y[:400], x[400:], y[400:], num_classes=4, epochs=20,
                                  min_steps=200)
    assert res["top1"] < 0.4


def test_a_bad_run_dir_is_refused_before_any_work(tmp_path):
    from evals.common import checked_run_dir
    from evals.inputs import UserError

    with pytest.raises(UserError, match="not a run directory"):
        checked_run_dir(tmp_path / "nope", tmp_path / "x.pth")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    assert checked_run_dir(tmp_path / "run", tmp_path / "x.pth") == tmp_path / "run"
    assert checked_run_dir(None, tmp_path / "x.pth") is None      # outside a run: print only
    ckpt = tmp_path / "run" / "checkpoints" / "final.pth"
    assert checked_run_dir(None, ckpt) == (tmp_path / "run").resolve()   # inside one: its run
    assert checked_run_dir("none", ckpt) is None                  # --run none: print only
