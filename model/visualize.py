"""Display images for MAE reconstructions: the masked input, the reconstruction and the two combined."""
from __future__ import annotations

import numpy as np
import torch

GREY = 0.5  # masked patches are shown mid-grey in display (0..1) space


@torch.no_grad()
def reconstruction_panels(model, imgs, pred, mask, mean, std) -> dict[str, np.ndarray]:
    """Turn a forward pass into four uint8 N x H x W x 3 arrays: original, masked, reconstruction, pasted.

    ``imgs`` are the normalised model inputs (N, 3, H, W); ``pred`` (N, L, p*p*3) and ``mask`` (N, L,
    1 = masked) come from ``model(imgs)``; ``mean``/``std`` undo the input normalisation for display.

    A norm-pix model predicts each patch up to its own mean and variance, which it never learned. To show
    pixels we un-normalise every predicted patch with the mean and variance of the corresponding *target*
    patch of ``imgs`` (the official demo does the same). That uses statistics of patches the model did not
    see, so the reconstruction panels are a display aid, not what the model alone could output; the loss
    is measured in the normalised space and needs no such help.
    """
    imgs = imgs.detach().float()
    pred = pred.detach().float()
    mask = mask.detach().float()
    if getattr(model, "norm_pix_loss", False):
        target = model.patchify(imgs)
        mu = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.e-6) ** .5 + mu
    if hasattr(model, "pred_to_pixels"):
        pred = model.pred_to_pixels(pred)  # PCA coefficients -> pixels (identity for the pixel targets)
    recon = model.unpatchify(pred)
    p = model.patch_size
    pix_mask = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * imgs.shape[1]))  # 1 = masked pixel

    m = torch.as_tensor(mean, dtype=torch.float32, device=imgs.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=imgs.device).view(1, -1, 1, 1)
    original = imgs * s + m
    recon = recon * s + m
    masked = original * (1 - pix_mask) + GREY * pix_mask
    pasted = original * (1 - pix_mask) + recon * pix_mask

    def to_uint8(x):
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    return {"original": to_uint8(original), "masked": to_uint8(masked),
            "reconstruction": to_uint8(recon), "pasted": to_uint8(pasted)}
