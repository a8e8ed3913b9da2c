"""The paper's third reconstruction target (Table 1(d)): whitened PCA coefficients per patch.

The basis is fit on data (``fit_pca_target``), lives in buffers (so checkpoints carry it and a
resumed run keeps it), and the trainer fits it before the first step of a fresh run.
"""
from __future__ import annotations

import pytest
import torch

from model import MaskedAutoencoderViT, load_checkpoint, mae_to_hf_state_dict, reconstruction_panels

from .test_trainer_helpers import final_weights, tiny_data, write_config  # noqa: F401


def pca_model(**kw) -> MaskedAutoencoderViT:
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
               decoder_depth=1, decoder_num_heads=4, target="pca")
    cfg.update(kw)
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**cfg)


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency images (patch pixels strongly correlated), like photographs."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randn(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(small, size=32, mode="bilinear", align_corners=False)


def test_default_dims_and_head_size():
    m = pca_model()
    assert m.pca_dims == 8 * 8 * 3 // 8 == m.decoder_pred.out_features   # the paper's 96 of 768 ratio
    assert pca_model(pca_dims=5).decoder_pred.out_features == 5
    with pytest.raises(ValueError, match="pca_dims must be in"):
        pca_model(pca_dims=1000)
    with pytest.raises(ValueError, match="pca_dims is for target='pca'"):
        pca_model(target="pixel", pca_dims=4)


def test_loss_needs_a_fitted_basis():
    m = pca_model()
    with pytest.raises(RuntimeError, match="fit_pca_target"):
        m(smooth_images(2))
    with pytest.raises(ValueError, match="fit_pca_target is for target='pca'"):
        pca_model(target="pixel").fit_pca_target(smooth_images(2))


def test_targets_are_whitened_coefficients_and_reconstruct_patches():
    m = pca_model(pca_dims=24)
    fit = smooth_images(256)
    explained = m.fit_pca_target(fit)
    assert 0.9 < explained <= 1.0            # smooth images: few components hold most of the variance
    t = m.target_patches(fit).reshape(-1, 24)
    assert torch.allclose(t.mean(0), torch.zeros(24), atol=1e-4)
    assert torch.allclose(t.var(0), torch.ones(24), atol=1e-2)       # whitened
    cov = (t.T @ t) / (t.shape[0] - 1)
    assert torch.allclose(cov, torch.eye(24), atol=1e-2)              # decorrelated
    # coefficients -> pixels: close to the patches (the kept variance), exact with every component
    x = smooth_images(4, seed=1)
    patches = m.patchify(x)
    rel = (m.pred_to_pixels(m.target_patches(x)) - patches).pow(2).mean() / patches.var()
    assert rel < 0.1
    full = pca_model(pca_dims=192)
    full.fit_pca_target(fit)
    assert torch.allclose(full.pred_to_pixels(full.target_patches(x)), patches, atol=1e-3)
    # refitting on the same data gives the same basis (signs fixed)
    again = pca_model(pca_dims=24)
    again.fit_pca_target(fit)
    assert torch.allclose(again.pca_components, m.pca_components, atol=1e-5)


def test_trains_and_reconstruction_panels_show_pixels():
    m = pca_model()
    m.fit_pca_target(smooth_images(128))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    x = smooth_images(16, seed=2)
    noise = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    first = None
    for _ in range(60):
        loss, pred, mask = m(x, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert pred.shape == (16, 16, m.pca_dims)
    assert loss.item() < 0.5 * first
    panels = reconstruction_panels(m, x[:2], pred[:2], mask[:2], [0, 0, 0], [1, 1, 1])
    assert panels["reconstruction"].shape == (2, 32, 32, 3)


def test_checkpoint_carries_the_basis(tmp_path):
    m = pca_model()
    m.fit_pca_target(smooth_images(64))
    path = tmp_path / "pca.pth"
    torch.save({"model": m.state_dict(), "model_config": m.config}, path)
    back = load_checkpoint(path)
    assert back.target == "pca" and bool(back.pca_fitted)
    for name in ("pca_mean", "pca_components", "pca_std"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    x = smooth_images(2, seed=3)
    assert torch.equal(back.target_patches(x), m.target_patches(x))
    bare = load_checkpoint(m.state_dict())          # no config: the shapes say it is a PCA model
    assert bare.target == "pca" and bare.pca_dims == m.pca_dims
    assert torch.equal(bare.target_patches(x), m.target_patches(x))
    with pytest.raises(ValueError, match="PCA coefficients"):
        mae_to_hf_state_dict(m.state_dict())


def test_trainer_fits_the_basis_once_and_resume_keeps_it(tmp_path, tiny_data):
    from trainer.pretrain import main
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_data, run, epochs=2,
                       model={"target": "pca", "pca_dims": 12})
    assert main(["--config", str(cfg)]) == 0
    w2 = final_weights(run)
    assert bool(w2["pca_fitted"]) and w2["pca_components"].shape == (12, 192)
    assert torch.allclose(w2["pca_components"] @ w2["pca_components"].T, torch.eye(12), atol=1e-4)
    # two more epochs resume from the checkpoint: the basis is the saved one, not a new fit
    assert main(["--config", str(cfg), "epochs=4", "--resume", "--allow-change", "epochs"]) == 0
    w4 = final_weights(run)
    assert torch.equal(w4["pca_components"], w2["pca_components"])
    assert not torch.equal(w4["decoder_pred.weight"], w2["decoder_pred.weight"])
