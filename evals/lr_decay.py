"""Layer-wise learning-rate decay for fine-tuning a ViT (BEiT / MAE recipe).

Why: lower layers of a pretrained encoder hold generic features that fine-tuning should move less;
giving layer i the scale decay^(L+1-i) keeps them close to their pretrained values.

Layer ids follow the official MAE names (shared by timm's VisionTransformer):
    cls_token, pos_embed, patch_embed.*, (reg_token, norm_pre)  -> 0
    blocks.i.*                                                   -> i + 1
    everything else (norm, fc_norm, head)                        -> L + 1
with L = number of blocks and scale = decay ** (L + 1 - layer_id).
Weight decay is off for 1-D tensors (biases, norm weights) and the tokens / position embeddings.

timm's `param_groups_layer_decay` gives the same scales for a timm ViT with global_pool='avg' (its
`norm` is an Identity there), but puts a real final `norm` one layer above the head, so the scales of
every block shift; this follows MAE exactly for any module with these names.
"""
from __future__ import annotations

import re

import torch.nn as nn

_STEM = re.compile(r"^(cls_token|reg_token|pos_embed|patch_embed|norm_pre|mask_token)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
NO_WEIGHT_DECAY = ("cls_token", "reg_token", "pos_embed", "dist_token", "mask_token")


def layer_id_for(name: str, num_layers: int) -> int:
    """Layer id of a parameter name: 0 stem, i+1 for blocks.i, num_layers+1 ... see module doc.

    `num_layers` is the number of transformer blocks.
    """
    if _STEM.match(name):
        return 0
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def count_blocks(model: nn.Module) -> int:
    """Number of transformer blocks (`blocks.<i>`) in a model's parameter names."""
    ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := _BLOCK.match(n))]
    if not ids:
        raise ValueError(f"{type(model).__name__} has no parameters named 'blocks.<i>.*': "
                         "layer-wise lr decay needs the ViT naming of MAE/timm")
    return max(ids) + 1


def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                     no_weight_decay_list=NO_WEIGHT_DECAY) -> list[dict]:
    """Optimizer param groups with `lr_scale` (multiply the scheduled lr by it) and `weight_decay`.

    Groups are keyed by (layer id, decay / no decay); each group also carries `layer_id` and the
    parameter `names` for inspection (optimizers ignore unknown keys).
    """
    num_layers = count_blocks(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim == 1 or name.endswith(".bias") or name.split(".")[0] in no_weight_decay_list
        lid = layer_id_for(name, num_layers)
        key = (lid, no_wd)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "layer_id": lid,
                           "lr_scale": layer_decay ** (num_layers + 1 - lid),
                           "weight_decay": 0.0 if no_wd else weight_decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def default_layer_decay(embed_dim: int) -> float:
    """The paper's decay by model width: 0.65 up to ViT-B (768), 0.75 for ViT-L/H."""
    return 0.65 if embed_dim <= 768 else 0.75
