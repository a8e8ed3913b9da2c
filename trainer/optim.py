"""AdamW as in the MAE recipe: betas (0.9, 0.95), weight decay only on weight matrices.

No decay on biases, norm weights, any other 1-D parameter, and (by default) the position / cls /
mask tokens. The official pretraining script decays cls and mask tokens (it calls timm's
``add_weight_decay`` without a skip list); ``optim.decay_tokens: true`` reproduces that.
Tokens are the names below plus whatever the model's ``no_weight_decay()`` lists (timm's convention),
so that the mask-token ablation's ``encoder_mask_token`` is treated exactly like the default arm's
``mask_token``: both arms of the ablation then train under the same rule.
Frozen parameters (the fixed sin-cos position embeddings, the ablation's unused decoder mask token)
are left out entirely.
"""
from __future__ import annotations

import torch

TOKEN_NAMES = ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "encoder_mask_token", "dist_token")


def effective_batch(batch_size: int, accum_steps: int, world_size: int) -> int:
    return batch_size * accum_steps * world_size


def scaled_lr(blr: float, eff_batch: int) -> float:
    """The linear scaling rule: lr = blr * effective batch / 256."""
    return blr * eff_batch / 256


def param_groups(model: torch.nn.Module, weight_decay: float, decay_tokens: bool = False) -> list[dict]:
    """Two groups: decayed weight matrices, and everything exempt from decay."""
    decay, no_decay = [], []
    tokens = set(TOKEN_NAMES) | set(getattr(model, "no_weight_decay", set)())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name.split(".")[-1]
        is_token = short in tokens or name in tokens
        if p.ndim <= 1 or name.endswith(".bias") or (is_token and not decay_tokens):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_optimizer(model: torch.nn.Module, cfg_optim, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the fused CUDA kernel when training on a GPU."""
    groups = param_groups(model, cfg_optim.weight_decay, cfg_optim.decay_tokens)
    kwargs = {}
    if device.type == "cuda" and cfg_optim.fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg_optim.betas), eps=cfg_optim.eps, **kwargs)
