"""Reading and writing MAE weights in the formats people actually have.

``load_checkpoint`` accepts, from a path or an already-loaded dict:

- our checkpoints: ``{"model": state_dict, "model_config": {...}, ...}`` (trainer and ``save_model_state``);
- official MAE ones: ``{"model": state_dict}``, full (``mae_visualize_*``) or encoder-only
  (``mae_pretrain_*``); the architecture is inferred from tensor shapes;
- Hugging Face ``ViTMAEForPreTraining`` / ``ViTMAEModel`` state dicts, in the transformers >= 5 layout
  (``vit.layers.N.attention.q_proj``) or the older hub layout (``vit.encoder.layer.N.attention.attention.query``);
- timm ``VisionTransformer`` state dicts (``head``/``fc_norm`` are dropped; loads as encoder-only).

An encoder-only source leaves the decoder at its fresh initialisation: ``model.loaded_from["encoder_only"]``
says so, because its reconstructions are meaningless. This is the only module of ``model`` that reads files.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from common.files import write_atomic_with

from .mae import MaskedAutoencoderViT

# Attention heads for widths whose official models use 128-wide or otherwise non-64 heads.
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}
_DECODER_HEADS_BY_WIDTH = {512: 16}
_ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def heads_for_width(width: int, decoder: bool = False) -> int:
    """Heads of an official-style model of this width (checkpoints do not record it): the official table,
    else 64-wide heads (32-wide for decoders, as the official 512/16 decoder)."""
    table = _DECODER_HEADS_BY_WIDTH if decoder else _HEADS_BY_WIDTH
    if width in table:
        return table[width]
    head_dim = 32 if decoder else 64
    return max(1, width // head_dim)


# ---------------------------------------------------------------------- Hugging Face names
_HF_BLOCK_V5 = {  # ours -> transformers >= 5
    "norm1": "layernorm_before", "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_BLOCK_V4 = {  # ours -> the layout of checkpoints on the hub (transformers 4.x)
    "norm1": "layernorm_before", "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}
_HF_QKV = {"v5": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
           "v4": ("attention.attention.query", "attention.attention.key", "attention.attention.value")}
_HF_TOP = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
    "decoder_embed.weight": "decoder.decoder_embed.weight", "decoder_embed.bias": "decoder.decoder_embed.bias",
    "mask_token": "decoder.mask_token", "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm.weight": "decoder.decoder_norm.weight", "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight", "decoder_pred.bias": "decoder.decoder_pred.bias",
}


def _hf_layout(layout: str) -> str:
    if layout == "auto":
        try:  # optional dependency, imported only to read its version
            import transformers
            return "v5" if int(transformers.__version__.split(".")[0]) >= 5 else "v4"
        except ImportError:  # not installed: the hub checkpoints' (4.x) layout
            return "v4"
    if layout not in ("v4", "v5"):
        raise ValueError(f"layout must be 'auto', 'v4' or 'v5', got {layout!r}")
    return layout


def _hf_block_prefix(ours_prefix: str, i: int, layout: str) -> str:
    if ours_prefix == "blocks":
        return f"vit.layers.{i}" if layout == "v5" else f"vit.encoder.layer.{i}"
    return f"decoder.decoder_layers.{i}"


def mae_to_hf_state_dict(sd: dict, layout: str = "auto") -> dict:
    """Our/official MAE names -> ``ViTMAEForPreTraining`` names (qkv split into q, k, v).

    ``layout``: "v5" (transformers >= 5), "v4" (hub checkpoints), "auto" (the installed transformers).
    """
    if "pca_components" in sd:
        raise ValueError("this MAE predicts PCA coefficients (target='pca'); Hugging Face's ViTMAE predicts "
                         "pixels, so only its encoder converts (mae_to_timm_vit_state_dict)")
    layout = _hf_layout(layout)
    block_map = _HF_BLOCK_V5 if layout == "v5" else _HF_BLOCK_V4
    out = {}
    for k, v in sd.items():
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
            continue
        m = re.match(r"(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$", k)
        if not m:
            raise KeyError(f"no Hugging Face name for MAE key {k!r}")
        prefix = _hf_block_prefix(m.group(1), int(m.group(2)), layout)
        name, kind = m.group(3), m.group(4)
        if name == "attn.qkv":
            for part, hf in zip(v.chunk(3, dim=0), _HF_QKV[layout]):
                out[f"{prefix}.{hf}.{kind}"] = part
        elif name in block_map:
            out[f"{prefix}.{block_map[name]}.{kind}"] = v
        else:
            raise KeyError(f"no Hugging Face name for MAE key {k!r}")
    return out


def is_hf_state_dict(sd: dict) -> bool:
    return any(k.startswith(("vit.", "decoder.decoder_", "embeddings.patch_embeddings")) for k in sd)


def hf_to_mae_state_dict(sd: dict) -> dict:
    """``ViTMAEForPreTraining`` (or bare ``ViTMAEModel``) names, either layout -> official MAE names."""
    if any(k.startswith("embeddings.") for k in sd):  # a bare ViTMAEModel
        sd = {f"vit.{k}": v for k, v in sd.items()}
    top = {hf: ours for ours, hf in _HF_TOP.items()}
    inverse_blocks = [({hf: ours for ours, hf in _HF_BLOCK_V5.items()}, _HF_QKV["v5"]),
                      ({hf: ours for ours, hf in _HF_BLOCK_V4.items()}, _HF_QKV["v4"])]
    out, qkv = {}, {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
            continue
        m = re.match(r"(vit\.layers|vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$", k)
        if not m:
            raise KeyError(f"unrecognised Hugging Face ViTMAE key {k!r}")
        ours = f"{'decoder_blocks' if m.group(1).startswith('decoder') else 'blocks'}.{m.group(2)}"
        name, kind = m.group(3), m.group(4)
        for names, qkv_names in inverse_blocks:
            if name in qkv_names:
                qkv.setdefault(f"{ours}.attn.qkv.{kind}", [None] * 3)[qkv_names.index(name)] = v
                break
            if name in names:
                out[f"{ours}.{names[name]}.{kind}"] = v
                break
        else:
            raise KeyError(f"unrecognised Hugging Face ViTMAE key {k!r}")
    for k, parts in qkv.items():
        if any(p is None for p in parts):
            raise KeyError(f"incomplete q/k/v projections for {k!r}")
        out[k] = torch.cat(parts, dim=0)
    return out


def hf_config_kwargs(model_config: dict) -> dict:
    """``ViTMAEConfig`` keyword arguments for one of our model configs (no transformers import needed)."""
    c = model_config
    return dict(
        image_size=c["img_size"], patch_size=c["patch_size"], num_channels=c.get("in_chans", 3),
        hidden_size=c["embed_dim"], num_hidden_layers=c["depth"], num_attention_heads=c["num_heads"],
        intermediate_size=int(c["embed_dim"] * c.get("mlp_ratio", 4.0)),
        decoder_hidden_size=c["decoder_embed_dim"], decoder_num_hidden_layers=c["decoder_depth"],
        decoder_num_attention_heads=c["decoder_num_heads"],
        decoder_intermediate_size=int(c["decoder_embed_dim"] * c.get("mlp_ratio", 4.0)),
        mask_ratio=c.get("mask_ratio", 0.75), norm_pix_loss=bool(c.get("norm_pix_loss", False)),
        layer_norm_eps=c.get("norm_eps", 1e-6), qkv_bias=True, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# ---------------------------------------------------------------------- timm names
def mae_to_timm_vit_state_dict(sd: dict, global_pool: str = "token") -> dict:
    """The encoder of an MAE state dict under timm ``VisionTransformer`` names (decoder dropped).

    The encoder keys already are timm's. With ``global_pool="avg"`` (the official fine-tuning recipe)
    the final norm becomes timm's ``fc_norm``. No classifier head: build the timm model with
    ``num_classes=0`` for a strict load, or load non-strictly and train the head.
    """
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
    out = {k: v for k, v in sd.items() if k.startswith(_ENCODER_PREFIXES)}
    if global_pool == "avg":
        out = {("fc_" + k if k.startswith("norm.") else k): v for k, v in out.items()}
    return out


def _from_timm(sd: dict) -> dict:
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_drop"))}
    if "norm.weight" not in sd and "fc_norm.weight" in sd:  # avg-pool fine-tuned models keep the norm here
        sd["norm.weight"], sd["norm.bias"] = sd.pop("fc_norm.weight"), sd.pop("fc_norm.bias")
    return {k: v for k, v in sd.items() if not k.startswith("fc_norm.")}


# ---------------------------------------------------------------------- inference from shapes
def infer_config(sd: dict) -> dict:
    """Constructor keywords of the model that produced an official-named state dict."""
    need = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise KeyError(f"cannot infer the architecture: missing {missing}")
    proj = sd["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    n_tokens = sd["pos_embed"].shape[1]
    grid = math.isqrt(n_tokens - 1)
    if grid * grid != n_tokens - 1:
        raise ValueError(f"pos_embed has {n_tokens} tokens: not 1 + a square grid of patches")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    cfg = dict(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
               num_heads=heads_for_width(embed_dim),
               mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim)
    if "decoder_embed.weight" in sd:
        dec = sd["decoder_embed.weight"].shape[0]
        cfg.update(decoder_embed_dim=dec, decoder_num_heads=heads_for_width(dec, decoder=True),
                   decoder_depth=1 + max((int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.")),
                                         default=-1))
    else:
        cfg.update(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)  # the official decoder
    return cfg


# ---------------------------------------------------------------------- load / save
def _strip_prefixes(sd: dict) -> dict:
    """Remove wrappers' prefixes: DDP's ``module.`` and torch.compile's ``_orig_mod.``."""
    out = {}
    for k, v in sd.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


# Globals a checkpoint may name besides torch's weights-only defaults. Official MAE training checkpoints
# (``misc.save_model``) store the run's ``argparse.Namespace`` under "args"; nothing else is needed, and
# every entry here is a class whose unpickling only sets attributes (no code runs).
SAFE_CHECKPOINT_GLOBALS = (argparse.Namespace,)


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle needs a global outside the allow-list: it is refused, never unpickled."""


def _disallowed_global(message: str) -> str | None:
    """The global torch's weights-only unpickler refused, from its error text ("GLOBAL posix.system ...")."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return m.group(1) if m else None


def _allow_safe_globals() -> None:
    """Register the allow-list process-wide (idempotent). Not the ``safe_globals`` context manager:
    it swaps a process-global list on entry and exit, so two threads loading at once (the inspector
    serves several browsers) could strip each other's allowance mid-load."""
    have = set(torch.serialization.get_safe_globals())
    missing = [g for g in SAFE_CHECKPOINT_GLOBALS if g not in have]
    if missing:
        torch.serialization.add_safe_globals(missing)


def safe_torch_load(path, map_location="cpu", mmap: bool = False):
    """``torch.load(path, weights_only=True)`` with ``SAFE_CHECKPOINT_GLOBALS`` allowed; the one reader
    of checkpoint files in the project.

    A file that needs any other global raises ``UnsafeCheckpointError`` naming the file and the global;
    there is deliberately no fallback to full unpickling, which would run whatever code the file names.
    Any other read failure is a ``ValueError`` naming the file; a missing file is ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if mmap and not zipfile.is_zipfile(path):  # torch mmaps only its zip format, not legacy files
        mmap = False
    _allow_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        name = _disallowed_global(str(e))
        if name is not None:
            raise UnsafeCheckpointError(
                f"{path}: refused: the checkpoint needs the Python global {name}, which is not allowed "
                f"(checkpoints may hold only tensors, plain containers and numbers, and "
                f"{', '.join(f'{c.__module__}.{c.__qualname__}' for c in SAFE_CHECKPOINT_GLOBALS)}); "
                f"it was not unpickled") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({_one_line(e)})") from None
    except Exception as e:  # untrusted bytes: torch.load fails in many types (RuntimeError from its
        # zip reader, EOFError, KeyError, ...); each is this one ValueError naming the file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    """The informative line of a loader error (torch's weights-only errors open with generic advice)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error: (.+)", text)
    if m:
        return m.group(1).strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__


def _state_dict_of(obj, src: str) -> tuple[dict, dict | None]:
    if not isinstance(obj, dict):
        raise ValueError(f"{src}: expected a dict checkpoint, found {type(obj).__name__}")
    config = obj.get("model_config")
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{src}: no model weights found (keys: {sorted(obj)[:10]})")
    return _strip_prefixes(tensors), config


def load_checkpoint(path_or_dict, map_location="cpu", **overrides) -> MaskedAutoencoderViT:
    """A ``MaskedAutoencoderViT`` from any supported checkpoint (see the module docstring), in eval mode.

    ``overrides`` replace constructor keywords (e.g. ``norm_pix_loss=False`` for the official
    ``mae_visualize`` models, which were trained on raw pixels; our default is norm-pix).
    """
    if isinstance(path_or_dict, (str, os.PathLike)):
        src = str(path_or_dict)
        obj = safe_torch_load(path_or_dict, map_location)
    else:
        src, obj = "<checkpoint dict>", path_or_dict
    sd, config = _state_dict_of(obj, src)

    fmt = "mae"
    if is_hf_state_dict(sd):
        fmt = "huggingface"
        try:
            sd = hf_to_mae_state_dict(sd)
        except KeyError as e:
            raise ValueError(f"{src}: looks like a Hugging Face ViTMAE checkpoint but {e.args[0]}") from None
    elif any(k.startswith(("head.", "fc_norm.")) for k in sd):
        fmt, sd = "timm", _from_timm(sd)
    if "blocks.0.attn.qkv.weight" not in sd or "patch_embed.proj.weight" not in sd:
        raise ValueError(f"{src}: not an MAE / ViT checkpoint (first keys: {list(sd)[:6]})")

    if config is None:
        try:
            config = infer_config(sd)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{src}: {e}") from None
        if "pca_components" in sd:  # a PCA-target model (ours): the head predicts pca_dims coefficients
            config.update(target="pca", pca_dims=int(sd["pca_components"].shape[0]))
        else:
            config["norm_pix_loss"] = True
    config = {k: v for k, v in config.items() if k != "custom_norm_layer"}
    config.update(overrides)
    try:
        model = MaskedAutoencoderViT(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{src}: cannot build a model from its config {config}: {e}") from None

    expected = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in sd.items() if k in expected and expected[k].shape != v.shape]
    unexpected = sorted(set(sd) - set(expected))
    missing = sorted(set(expected) - set(sd))
    decoder_only = [k for k in missing if not k.startswith(_ENCODER_PREFIXES)]
    encoder_only = bool(missing) and missing == decoder_only and "decoder_embed.weight" in missing
    if mismatched or unexpected or (missing and not encoder_only):
        problems = []
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched[:5]))
        if unexpected:
            problems.append(f"unexpected keys: {unexpected[:8]}")
        if missing and not encoder_only:
            problems.append(f"missing keys: {missing[:8]}")
        raise ValueError(f"{src}: checkpoint does not match the model it describes: " + " | ".join(problems))
    # Encoder-only: the decoder keeps its fresh initialisation (its fixed sin-cos table is already right).
    model.load_state_dict(sd, strict=not encoder_only)
    model.loaded_from = {"source": src, "format": fmt, "encoder_only": encoder_only}
    model.eval()
    return model


def save_model_state(model: MaskedAutoencoderViT, path, **extra) -> Path:
    """Write ``{"model": state_dict, "model_config": model.config, **extra}`` atomically.

    The file is written to a temporary name in the same directory, fsync'ed, then renamed over
    ``path`` (and the directory fsync'ed), so a crash never leaves a half-written checkpoint under
    the real name; a full disk is ``common.files.DiskFullError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "model_config": dict(model.config), **extra}
    name = getattr(model, "model_name", None)
    if name is not None:
        state.setdefault("model_name", name)
    return write_atomic_with(path, lambda f: torch.save(state, f), sync_dir=True)
