"""The Masked Autoencoder (He et al., 2021), faithful to the official ``models_mae.py``.

Same constructor keywords and the same ``state_dict`` keys as the official ``MaskedAutoencoderViT``,
so official checkpoints load unchanged; built, like the official code, on timm's ``PatchEmbed`` and
``Block`` (fused qkv projection, attention through ``scaled_dot_product_attention``; see ``blocks.py``). Methods are named
after the paper's steps: ``patchify``, ``random_masking``, ``forward_encoder``, ``forward_decoder``,
``forward_loss``.

Our additions are opt-in keywords: ``mask_sampler`` ("random" | "block" | "grid"),
``mask_token_in_encoder`` (the paper's ablation), ``loss_on_all_patches``, ``target``
("pixel" | "norm_pix" | "pca"; ``norm_pix_loss`` is the official alias) and ``mask_ratio`` (the
default for ``forward``). ``config`` holds the constructor keywords as a JSON-able dict for checkpoints.

The ``pca`` target is the paper's Table 1(d) third option: the decoder predicts the ``pca_dims``
leading PCA coefficients of each patch, whitened (unit variance each), instead of its pixels. The PCA
basis is data: ``fit_pca_target(imgs)`` computes it from a sample of training images before training
(the trainer does this), and it lives in buffers so that checkpoints carry it.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed

from .blocks import vit_block
from .masking import SAMPLERS, make_noise, sample_mask
from .pos_embed import sincos_2d

TARGETS = ("pixel", "norm_pix", "pca")
PCA_FRACTION = 8  # the paper keeps the 96 largest of 768 coefficients (16 x 16 x 3 patches): 1/8


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (N, L, D), ids (N, K) -> (N, K, D); ``expand`` instead of ``repeat`` avoids a copy of the index."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MaskedAutoencoderViT(nn.Module):
    """Masked Autoencoder with a Vision Transformer encoder and a narrow transformer decoder."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3,
                 embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=None, norm_pix_loss=None, *,
                 target: str | None = None, mask_sampler: str = "random", mask_token_in_encoder: bool = False,
                 loss_on_all_patches: bool = False, mask_ratio: float = 0.75, norm_eps: float = 1e-6,
                 pca_dims: int | None = None):
        super().__init__()
        target = self._resolve_target(target, norm_pix_loss)
        self.loss_on_all_patches = loss_on_all_patches  # read by check_mask_ratio
        self.check_mask_ratio(mask_ratio)
        if mask_sampler not in SAMPLERS:
            raise ValueError(f"mask_sampler must be one of {SAMPLERS}, got {mask_sampler!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        # The official factories pass partial(nn.LayerNorm, eps=1e-6); that is our default, so that a
        # checkpoint's json config (which cannot hold a class) rebuilds the same model.
        custom_norm = norm_layer is not None
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=norm_eps)
        patch_dim = patch_size**2 * in_chans
        pca_dims = self._check_pca_dims(target, pca_dims, patch_dim)
        # attribute order = the official one, so state_dict order (and the init RNG stream) match too
        self._build_encoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_layer)
        self._build_decoder(embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                            norm_layer, out_dim=pca_dims if target == "pca" else patch_dim)

        # Ablation only: the encoder's own mask token (absent from the default state dict). The
        # decoder's mask_token then fills nothing (the encoder output is full length): it stays in the
        # state dict under its official name, so checkpoints keep one layout, but is frozen, so DDP
        # without find_unused_parameters does not wait for its gradient and the optimiser skips it.
        if mask_token_in_encoder:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.mask_token.requires_grad_(False)

        if target == "pca":  # the PCA basis (rows), the mean patch and each coefficient's std; fit_pca_target
            self.register_buffer("pca_mean", torch.zeros(patch_dim))
            self.register_buffer("pca_components", torch.zeros(pca_dims, patch_dim))
            self.register_buffer("pca_std", torch.ones(pca_dims))
            self.register_buffer("pca_fitted", torch.zeros((), dtype=torch.bool))

        self.target = target
        self.pca_dims = pca_dims
        self.norm_pix_loss = target == "norm_pix"
        self.mask_sampler = mask_sampler
        self.mask_token_in_encoder = mask_token_in_encoder
        self.mask_ratio = mask_ratio
        self.config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=float(mlp_ratio),
            norm_pix_loss=self.norm_pix_loss, target=target, mask_sampler=mask_sampler,
            mask_token_in_encoder=mask_token_in_encoder, loss_on_all_patches=loss_on_all_patches,
            mask_ratio=mask_ratio, norm_eps=norm_eps)
        if target == "pca":
            self.config["pca_dims"] = pca_dims
        if custom_norm:
            self.config["custom_norm_layer"] = repr(norm_layer)  # informative: cannot be rebuilt from json

        self.initialize_weights()

    def check_mask_ratio(self, mask_ratio: float) -> None:
        """A training mask ratio must hide something and show something: (0, 1). Ratio 0 is defined
        only with ``loss_on_all_patches`` (a plain autoencoder); otherwise the masked-patch loss would
        average over no patches."""
        ratio = float(mask_ratio)
        low_ok = ratio >= 0.0 if self.loss_on_all_patches else ratio > 0.0
        if not (low_ok and ratio < 1.0):
            interval = "[0, 1) with loss_on_all_patches" if self.loss_on_all_patches else \
                "(0, 1) (0 only with loss_on_all_patches=True)"
            raise ValueError(f"mask_ratio must be in {interval}, got {mask_ratio}")

    def unused_parameters(self) -> list[str]:
        """Parameters this configuration never uses in the loss (kept for the state-dict layout).

        The constructor freezes them; a caller that unfreezes one must wrap the model in DDP with
        ``find_unused_parameters=True`` (``trainer.distributed.wrap_ddp`` reads this list).
        """
        return ["mask_token"] if self.mask_token_in_encoder else []

    @staticmethod
    def _resolve_target(target, norm_pix_loss):
        if target is None:
            return "norm_pix" if norm_pix_loss else "pixel"
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if norm_pix_loss is not None and bool(norm_pix_loss) != (target == "norm_pix"):
            raise ValueError(f"target={target!r} contradicts norm_pix_loss={norm_pix_loss}")
        return target

    @staticmethod
    def _check_pca_dims(target: str, pca_dims, patch_dim: int) -> int | None:
        """The pca target's coefficient count (default: 1/8 of the values per patch, as the paper)."""
        if target == "pca":
            pca_dims = int(pca_dims) if pca_dims is not None else max(1, patch_dim // PCA_FRACTION)
            if not 1 <= pca_dims <= patch_dim:
                raise ValueError(f"pca_dims must be in [1, {patch_dim}] (values per patch), got {pca_dims}")
        elif pca_dims is not None:
            raise ValueError(f"pca_dims is for target='pca', not target={target!r}")
        return pca_dims

    def _build_encoder(self, img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_layer):
        """MAE encoder specifics: patch embedding, cls token, fixed sin-cos positions, ViT blocks, norm."""
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)  # fixed sin-cos

        self.blocks = nn.ModuleList([vit_block(embed_dim, num_heads, mlp_ratio, norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

    def _build_decoder(self, embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                       norm_layer, out_dim: int):
        """MAE decoder specifics: projection to decoder width, mask token, positions, blocks, head."""
        num_patches = self.patch_embed.num_patches
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)

        self.decoder_blocks = nn.ModuleList([
            vit_block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_layer) for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, out_dim, bias=True)  # decoder to patch

    # ------------------------------------------------------------------ init
    def initialize_weights(self):
        """Official initialisation: fixed sin-cos position tables, xavier on linears and on the patch
        projection viewed as a linear layer, N(0, 0.02) for the cls and mask tokens."""
        grid = self.patch_embed.grid_size
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], grid, cls_token=True).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            sincos_2d(self.decoder_pos_embed.shape[-1], grid, cls_token=True).unsqueeze(0))

        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))

        nn.init.normal_(self.cls_token, std=.02)
        nn.init.normal_(self.mask_token, std=.02)
        if self.mask_token_in_encoder:
            nn.init.normal_(self.encoder_mask_token, std=.02)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ------------------------------------------------------------------ geometry
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def embed_dim(self) -> int:
        return self.cls_token.shape[-1]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> (N, L, p*p*C), each patch flattened as (row, column, channel)."""
        p = self.patch_size
        n, c, h, w = imgs.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> imgs (N, C, H, W); the inverse of ``patchify`` on the model's grid."""
        p = self.patch_size
        gh, gw = self.grid_size
        n, L, d = x.shape
        c = d // (p * p)
        if L != gh * gw or c * p * p != d:
            raise ValueError(f"expected (N, {gh * gw}, p*p*C) patches for patch size {p}, got {tuple(x.shape)}")
        x = x.reshape(n, gh, gw, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, gh * p, gw * p)

    # ------------------------------------------------------------------ masking
    def sample_mask(self, batch: int, mask_ratio: float, noise=None, generator=None, device=None, sampler=None):
        """(ids_keep, ids_restore, mask) from ``sampler`` (default: the configured ``mask_sampler``);
        ``noise`` (N, L) makes it deterministic."""
        return sample_mask(self.mask_sampler if sampler is None else sampler, batch, self.grid_size, mask_ratio, noise=noise,
                           generator=generator, device=device if device is not None else self.pos_embed.device)

    def random_masking(self, x, mask_ratio, noise=None, generator=None):
        """Per-sample masking by shuffling: x (N, L, D) -> (visible tokens (N, K, D), mask, ids_restore).

        With the default sampler this is exactly the official ``argsort(noise)`` recipe.
        """
        ids_keep, ids_restore, mask = self.sample_mask(x.shape[0], mask_ratio, noise, generator, x.device)
        return _gather_tokens(x, ids_keep), mask.to(x.dtype), ids_restore

    # ------------------------------------------------------------------ encoder
    def _cls_tokens(self, n: int) -> torch.Tensor:
        return (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_encoder(self, imgs, mask_ratio=None, noise=None, generator=None, sampler=None):
        """Embed patches, add positions, drop the masked ones, prepend cls, run the ViT. ``sampler``
        replaces the configured ``mask_sampler`` for this call only (the model is not changed).

        Returns (latent (N, 1+K, D), mask (N, L), ids_restore (N, L)). With ``mask_token_in_encoder`` the
        latent is full length (N, 1+L, D): masked positions carry the encoder's mask token instead.
        """
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        n = imgs.shape[0]
        ids_keep, ids_restore, mask = self.sample_mask(n, mask_ratio, noise, generator, imgs.device, sampler)
        if self.mask_token_in_encoder:
            x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
            mask = mask.to(x.dtype)
            masked_tok = (self.encoder_mask_token + self.pos_embed[:, 1:, :]).to(x.dtype)
            x = torch.lerp(x, masked_tok, mask.unsqueeze(-1))  # an exact select: mask is 0 or 1
        else:
            x = self.embed_visible(imgs, ids_keep)
        x = torch.cat([self._cls_tokens(n).to(x.dtype), x], dim=1)
        return self._run_encoder(x), mask, ids_restore

    def embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position of the visible patches only: (N, K, D).

        The same numbers as embedding all patches and then gathering the visible ones (the official
        order), but the p x p stride-p convolution is applied as the equivalent linear map to the K kept
        patches only, so 75% of the embedding work (forward and backward) is never done.
        """
        p = self.patch_size
        n, c, h, w = imgs.shape
        if (h, w) != tuple(self.patch_embed.img_size):
            raise ValueError(f"input size {h}x{w} does not match the model ({self.patch_embed.img_size})")
        pixels = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * p * p)
        proj = self.patch_embed.proj
        x = F.linear(_gather_tokens(pixels, ids_keep), proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)
        pos = self.pos_embed[:, 1:, :].expand(n, -1, -1)
        return x + _gather_tokens(pos, ids_keep).to(x.dtype)

    def _embed_all(self, imgs: torch.Tensor) -> torch.Tensor:
        """cls + every patch embedded with its position: the unmasked encoder input (N, 1+L, D)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        return torch.cat([self._cls_tokens(x.shape[0]).to(x.dtype), x], dim=1)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The encoder on ALL patches (no masking), after the final norm: (N, 1+L, D). For probes and kNN."""
        return self._run_encoder(self._embed_all(imgs))

    def block_features(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The encoder on all patches, every block's output through the final norm: ``depth`` tensors
        (N, 1+L, D), the last equal to ``forward_features``. For asking which block's features are
        best (``python -m evals.layers``) in one pass."""
        x, out = self._embed_all(imgs), []
        for blk in self.blocks:
            x = blk(x)
            out.append(self.norm(x))
        return out

    def encode(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """(N, D) image embedding: the cls token ("cls") or the mean of the patch tokens ("avg")."""
        feats = self.forward_features(imgs)
        if pool == "cls":
            return feats[:, 0]
        if pool == "avg":
            return feats[:, 1:].mean(dim=1)
        raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")

    # ------------------------------------------------------------------ decoder
    def forward_decoder(self, x, ids_restore):
        """Embed to decoder width, add a mask token at each masked position, unshuffle to the original
        patch order, add the decoder's positions, run the blocks and predict p*p*C pixels per patch.

        ``x`` is ``forward_encoder``'s latent: cls + the visible tokens in kept order, or, with
        ``mask_token_in_encoder``, cls + all L tokens already in patch order.
        Returns (N, L, p*p*C) predictions for every patch ((N, L, pca_dims) for target pca), in the
        original order (no cls).
        """
        x = self.decoder_embed(x)
        n, L = ids_restore.shape
        # Decided by the option, not by the sequence length: with nothing masked (ratio 0) the visible
        # tokens are full length too, but still in shuffled order and must be put back.
        if not self.mask_token_in_encoder:
            # [cls, visible..., mask tokens...] gathered with ids_restore shifted past cls: the official
            # cat / gather / cat in one cat and one gather
            x = torch.cat([x, self.mask_token.to(x.dtype).expand(n, L + 1 - x.shape[1], -1)], dim=1)
            x = _gather_tokens(x, torch.cat([ids_restore.new_zeros(n, 1), ids_restore + 1], dim=1))
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = x[:, 1:, :]  # drop cls before the norm and head: the same result, less work
        return self.decoder_pred(self.decoder_norm(x))

    # ------------------------------------------------------------------ loss
    def target_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder learns to predict: pixels per patch, normalised per patch for ``norm_pix``,
        whitened PCA coefficients per patch for ``pca``."""
        target = self.patchify(imgs.detach()).float()
        if self.norm_pix_loss:
            var, mean = torch.var_mean(target, dim=-1, keepdim=True)  # unbiased variance, as official
            target = (target - mean) / (var + 1.e-6)**.5
        elif self.target == "pca":
            if not bool(self.pca_fitted):
                raise RuntimeError("target='pca' needs its PCA basis: call model.fit_pca_target(images) on a "
                                   "sample of training images first (trainer.pretrain does this)")
            target = ((target - self.pca_mean) @ self.pca_components.T) / self.pca_std
        return target

    @torch.no_grad()
    def fit_pca_target(self, imgs: torch.Tensor, all_ranks: bool | None = None) -> float:
        """Fit the ``pca`` target's basis on ``imgs`` (N, C, H, W, normalised like the training
        inputs; every patch of every image is a sample). Returns the fraction of the patch variance
        the kept ``pca_dims`` coefficients explain.

        ``all_ranks`` (default: whenever a torch.distributed group of more than one process is
        initialised) fits on the union of every rank's ``imgs``: the patch sums and second moments
        are all-reduced, so each rank gets the basis one process would fit on all those images, and
        a DDP run trains towards the same target as a single-process run with the same data. It is
        then a collective: call it on every rank.
        """
        if self.target != "pca":
            raise ValueError(f"fit_pca_target is for target='pca', this model's target is {self.target!r}")
        x = self.patchify(imgs.detach().float()).reshape(-1, self.pca_mean.numel()).double()
        # sufficient statistics (count, sum, sum of outer products): they add up across ranks
        stats = torch.cat([x.new_full((1,), x.shape[0]), x.sum(0), (x.T @ x).reshape(-1)])
        if all_ranks is None:
            all_ranks = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if all_ranks:
            dist.all_reduce(stats)
        d = x.shape[1]
        n, total, outer = stats[0], stats[1:1 + d], stats[1 + d:].reshape(d, d)
        if n < 2 * self.pca_dims:
            raise ValueError(f"fit_pca_target: {int(n)} patches are too few for {self.pca_dims} "
                             f"components; pass more images")
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0), evecs.flip(1)
        k = self.pca_dims
        comps = evecs[:, :k].T
        # a basis vector's sign is arbitrary: fix it (largest |entry| positive) so fits are reproducible
        idx = comps.abs().argmax(dim=1)
        comps = comps * torch.sign(comps.gather(1, idx[:, None]))
        self.pca_mean.copy_(mean.float())
        self.pca_components.copy_(comps.float())
        self.pca_std.copy_(evals[:k].clamp_min(1e-12).sqrt().float())
        self.pca_fitted.fill_(True)
        return float(evals[:k].sum() / evals.clamp_min(0).sum())

    def pred_to_pixels(self, pred: torch.Tensor) -> torch.Tensor:
        """Decoder output (N, L, out) -> per-patch pixel values (N, L, p*p*C) in the target's space:
        the identity for ``pixel`` and ``norm_pix`` (still per-patch normalised), the PCA
        reconstruction (mean + coefficients x basis) for ``pca``."""
        if self.target != "pca":
            return pred
        return (pred.float() * self.pca_std) @ self.pca_components + self.pca_mean

    def forward_loss(self, imgs, pred, mask):
        """Mean squared error per patch, averaged over masked patches (or all, with loss_on_all_patches)."""
        target = self.target_patches(imgs)
        loss = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)  # [N, L], mean loss per patch
        if self.loss_on_all_patches:
            return loss.mean()
        mask = mask.float()
        # mean loss on removed patches; an empty mask (refused by check_mask_ratio, but a caller may pass
        # one) sums to 0 rather than 0 / 0 = NaN
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, imgs, mask_ratio=None, noise=None, generator=None, sampler=None):
        """imgs (N, C, H, W) -> (loss, pred (N, L, p*p*C) or (N, L, pca_dims), mask (N, L), 1 = masked).

        ``noise`` (N, L) makes the masking deterministic; ``generator`` draws it reproducibly instead.
        ``sampler`` ("random" | "block" | "grid") masks this call with another sampler than the
        configured one, without changing the model (so concurrent callers may share it).
        """
        self.check_mask_ratio(self.mask_ratio if mask_ratio is None else mask_ratio)
        if noise is None and generator is not None:
            noise = make_noise(imgs.shape[0], self.num_patches, generator=generator)
            noise = noise.to(imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise, sampler=sampler)
        pred = self.forward_decoder(latent, ids_restore)  # [N, L, p*p*3]
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def no_weight_decay(self) -> set[str]:
        """Names the optimiser should exempt from weight decay besides norms and biases (timm convention)."""
        names = {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed"}
        if self.mask_token_in_encoder:
            names.add("encoder_mask_token")
        return names
