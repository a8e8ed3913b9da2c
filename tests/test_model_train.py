"""The model learns (a tiny MAE overfits a few sample images) and its display panels are right."""
import time

import numpy as np
import pytest
import torch

from model import IMAGENET_MEAN, IMAGENET_STD, MaskedAutoencoderViT, create_model, reconstruction_panels


def _sample_images(tmp_path, n=8, size=32):
    """A handful of the project's sample images (pipeline.sample), normalised like the loaders do."""
    from PIL import Image
    try:
        from pipeline.sample import make_sample_dataset
        root = make_sample_dataset(tmp_path / "sample", image_size=size, train_per_class=1, val_per_class=1, seed=0)
        files = sorted((root / "train").rglob("*.jpg"))[:n]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
    except ImportError:  # the pipeline package is another team's; smooth random images stand in
        g = torch.Generator().manual_seed(0)
        low = torch.rand(n, 3, 4, 4, generator=g)
        arrays = list((torch.nn.functional.interpolate(low, size=size, mode="bicubic").clamp(0, 1) * 255)
                      .permute(0, 2, 3, 1).to(torch.uint8).numpy())
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


STEPS = 150


def test_tiny_mae_overfits_a_handful_of_images(tmp_path):
    imgs = _sample_images(tmp_path)
    assert imgs.shape == (8, 3, 32, 32)
    torch.manual_seed(0)
    m = create_model("mae_vit_pico_patch8_64", img_size=32, patch_size=4).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    losses, t0 = [], time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest and immune to a busy machine
    try:
        for step in range(STEPS):
            loss = m(imgs, mask_ratio=0.75, generator=g)[0]  # fresh random masks every step
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f} in {time.perf_counter() - t0:.1f}s"


@pytest.mark.parametrize("target", ["pixel", "norm_pix"])
def test_reconstruction_panels(target):
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                             decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, target=target).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = torch.rand(2, 3, 32, 32)
    imgs = (pixels - mean) / std
    with torch.no_grad():
        _, pred, mask = m(imgs, noise=torch.rand(2, 16))
    # a perfect prediction reconstructs the image (norm-pix is undone with each patch's own statistics)
    perfect = m.target_patches(imgs)
    panels = reconstruction_panels(m, imgs, perfect, mask, IMAGENET_MEAN, IMAGENET_STD)
    assert set(panels) == {"original", "masked", "reconstruction", "pasted"}
    for v in panels.values():
        assert v.dtype == np.uint8 and v.shape == (2, 32, 32, 3)
    expected = (pixels.permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(panels["original"].astype(float) - expected).max() <= 1
    assert np.abs(panels["reconstruction"].astype(float) - expected).max() <= 1
    # with the model's own (untrained) prediction: visible patches pasted back, masked ones grey
    panels = reconstruction_panels(m, imgs, pred, mask, IMAGENET_MEAN, IMAGENET_STD)
    pix_mask = m.unpatchify(mask.unsqueeze(-1).expand(-1, -1, 192)).permute(0, 2, 3, 1).numpy() > 0.5
    assert np.array_equal(panels["pasted"][~pix_mask], panels["original"][~pix_mask])
    assert np.array_equal(panels["pasted"][pix_mask], panels["reconstruction"][pix_mask])
    assert np.all(panels["masked"][pix_mask] == 128)
    assert np.array_equal(panels["masked"][~pix_mask], panels["original"][~pix_mask])
