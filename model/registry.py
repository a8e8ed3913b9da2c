"""Named MAE configurations: the official ImageNet ones and a CPU-scale family for scaling sweeps.

``create_model(name, **overrides)`` builds one; any constructor keyword overrides the preset (e.g.
``img_size=32``). All presets use LayerNorm eps 1e-6 and, unlike the official constructor default,
per-patch normalised pixel targets (``norm_pix_loss=True``), as the paper recommends.

Presets (trainable parameters, from ``python -m model.registry``; decoder 512 wide x 8 blocks x 16 heads
for the ImageNet sizes, as the official models):

============================  =======  ======================  ================  =========  ========
name                          img / p  encoder width/depth/hd  decoder w/d/hd    encoder    total
============================  =======  ======================  ================  =========  ========
mae_vit_tiny_patch16          224/16   192/12/3                512/8/16          5.5M       31.2M
mae_vit_small_patch16         224/16   384/12/6                512/8/16          21.6M      47.4M
mae_vit_base_patch16          224/16   768/12/12               512/8/16          85.6M      111.7M
mae_vit_large_patch16         224/16   1024/24/16              512/8/16          303.1M     329.2M
mae_vit_huge_patch14          224/14   1280/32/16              512/8/16          630.4M     656.6M
mae_vit_pico_patch8_64        64/8     96/4/3                  64/1/2            0.47M      0.54M
mae_vit_nano_patch8_64        64/8     128/6/4                 96/2/3            1.21M      1.47M
mae_vit_micro_patch8_64       64/8     192/6/3                 128/2/4           2.71M      3.15M
mae_vit_mini_patch8_64        64/8     256/8/4                 128/2/4           6.37M      6.82M
mae_vit_small_patch8_64       64/8     384/8/6                 192/2/6           14.27M     15.27M
mae_vit_micro_patch4_32       32/4     192/6/3                 128/2/4           2.68M      3.11M
============================  =======  ======================  ================  =========  ========

Every ImageNet size also exists with patch 14 (``mae_vit_{tiny,small,base,large}_patch14``) and huge
with patch 16. ``mae_vit_micro_patch8_64`` is the CPU reference of DESIGN.md (64 patches, 16 visible
at 75%), the main demo model; the 64 px family spans ~30x in parameters for scaling sweeps.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping

import torch
import torch.nn as nn

from .mae import MaskedAutoencoderViT

_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
_IMAGENET = {  # width, depth, heads
    "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
    "large": (1024, 24, 16), "huge": (1280, 32, 16),
}
_CPU = {  # name: (img, patch, width, depth, heads, dec width, dec depth, dec heads)
    "mae_vit_pico_patch8_64": (64, 8, 96, 4, 3, 64, 1, 2),
    "mae_vit_nano_patch8_64": (64, 8, 128, 6, 4, 96, 2, 3),
    "mae_vit_micro_patch8_64": (64, 8, 192, 6, 3, 128, 2, 4),
    "mae_vit_mini_patch8_64": (64, 8, 256, 8, 4, 128, 2, 4),
    "mae_vit_small_patch8_64": (64, 8, 384, 8, 6, 192, 2, 6),
    "mae_vit_micro_patch4_32": (32, 4, 192, 6, 3, 128, 2, 4),
}

PRESETS: dict[str, dict] = {}
for _size, (_w, _d, _h) in _IMAGENET.items():
    for _p in (16, 14):
        PRESETS[f"mae_vit_{_size}_patch{_p}"] = dict(
            img_size=224, patch_size=_p, embed_dim=_w, depth=_d, num_heads=_h, **_DECODER)
for _name, (_img, _p, _w, _d, _h, _dw, _dd, _dh) in _CPU.items():
    PRESETS[_name] = dict(img_size=_img, patch_size=_p, embed_dim=_w, depth=_d, num_heads=_h,
                          decoder_embed_dim=_dw, decoder_depth=_dd, decoder_num_heads=_dh)
for _cfg in PRESETS.values():
    _cfg.update(mlp_ratio=4.0, norm_pix_loss=True)


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(PRESETS)


def model_config(name: str, **overrides) -> dict:
    """The constructor keywords of a preset with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    cfg = dict(PRESETS[name])
    if "target" in overrides and "norm_pix_loss" not in overrides:
        cfg.pop("norm_pix_loss")  # let an explicit target win over the preset's alias
    cfg.update(overrides)
    return cfg


def create_model(name: str, **overrides) -> MaskedAutoencoderViT:
    """Build a named MAE; any constructor keyword overrides the preset (e.g. img_size=32, norm_pix_loss=False)."""
    model = MaskedAutoencoderViT(**model_config(name, **overrides))
    model.model_name = name
    return model


def kwargs_from_config(cfg: Mapping) -> dict:
    """Constructor keywords of a run's stored config dict (``config.yaml``: sections ``model`` and
    ``data``), as the trainer builds its model: ``create_model(cfg["model"]["name"], **kw)``.

    The ``model`` section's keys except ``name``, with an ``extra`` section merged into it (the
    trainer stores its extra constructor keywords flattened; older dicts may nest them); an explicit
    ``target`` replaces ``norm_pix_loss`` (the model refuses a contradicting pair, and the trainer
    passes only the target); ``data.image_size`` becomes ``img_size`` unless the section names one.
    ``mask_ratio`` stays: it is the model's default for ``forward``. ValueError naming the key for a
    section that is not a mapping.
    """
    model_cfg = _section(cfg, "model")
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "extra")}
    kwargs.update(_section(model_cfg, "extra", "model.extra"))
    if "target" in kwargs:
        kwargs.pop("norm_pix_loss", None)
    image_size = _section(cfg, "data").get("image_size")
    if image_size and "img_size" not in kwargs:
        kwargs["img_size"] = image_size
    return kwargs


def _section(cfg: Mapping, key: str, where: str | None = None) -> Mapping:
    """``cfg[key]`` as a mapping ({} when absent or null); ValueError naming ``where`` otherwise."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"config key '{where or key}' must be a section (mapping), got "
                         f"{type(value).__name__} {value!r}")
    return value


def param_counts(model_or_config: nn.Module | Mapping) -> tuple[int, int]:
    """(encoder, total) trainable parameters of a model, or of the model a run's config dict builds
    (counted on the meta device: no memory, milliseconds even for ViT-H). The encoder is everything
    but the decoder and its mask token, as the paper counts it; frozen parameters (the fixed sin-cos
    position tables) are not counted. KeyError for an unknown or missing model name, ValueError /
    TypeError for keywords the constructor refuses."""
    model = model_or_config
    if isinstance(model_or_config, Mapping):
        name = _section(model_or_config, "model").get("name")
        if not name:
            raise KeyError("config has no model.name")
        with torch.device("meta"):
            model = create_model(name, **kwargs_from_config(model_or_config))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    encoder = sum(p.numel() for n, p in trainable if not n.startswith(("decoder", "mask_token")))
    return encoder, sum(p.numel() for _, p in trainable)


def encoder_param_count(model_or_config: nn.Module | Mapping) -> int:
    """Trainable encoder parameters (the paper's model size) of a model or a run's config dict;
    see :func:`param_counts`."""
    return param_counts(model_or_config)[0]


def main() -> None:
    """Print every preset with its trainable parameter counts."""
    argparse.ArgumentParser(description=main.__doc__).parse_args()
    print(f"{'name':28s} {'img/p':>7s} {'encoder':>12s} {'total':>12s}")
    for name in list_models():
        cfg = PRESETS[name]
        enc, tot = param_counts(create_model(name))
        print(f"{name:28s} {cfg['img_size']:>4d}/{cfg['patch_size']:<2d} {enc / 1e6:>11.2f}M {tot / 1e6:>11.2f}M")


if __name__ == "__main__":
    main()
