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

import functools
import warnings

import torch

TOKEN_NAMES = ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "encoder_mask_token", "dist_token")


def effective_batch(batch_size: int, accum_steps: int, world_size: int) -> int:
    return batch_size * accum_steps * world_size


def scaled_lr(blr: float, eff_batch: int) -> float:
    """The linear scaling rule: lr = blr * effective batch / 256."""
    return blr * eff_batch / 256


def _group_names(model: torch.nn.Module, decay_tokens: bool, legacy: bool = False) -> tuple[list, list]:
    """(names exempt from decay, names decayed), in ``named_parameters`` order. ``legacy``: the rule
    before the mask-token ablation's fix, when its decoder mask_token was trained and
    encoder_mask_token decayed (to read optimizer states of checkpoints written then)."""
    if legacy:
        tokens = set(TOKEN_NAMES) - {"encoder_mask_token"}
        trainable = set(getattr(model, "unused_parameters", list)())  # frozen now, trained then
    else:
        tokens = set(TOKEN_NAMES) | set(getattr(model, "no_weight_decay", set)())
        trainable = set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not (p.requires_grad or name in trainable):
            continue
        short = name.split(".")[-1]
        is_token = short in tokens or name in tokens
        if p.ndim <= 1 or name.endswith(".bias") or (is_token and not decay_tokens):
            no_decay.append(name)
        else:
            decay.append(name)
    return no_decay, decay


def param_groups(model: torch.nn.Module, weight_decay: float, decay_tokens: bool = False) -> list[dict]:
    """Two groups: everything exempt from decay, and decayed weight matrices."""
    params = dict(model.named_parameters())
    no_decay, decay = _group_names(model, decay_tokens)
    return [
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
    ]


def _regroup_legacy_state(now: tuple, legacy: tuple, optimizer, state_dict: dict):
    """load_state_dict pre-hook: an optimizer state saved under the legacy grouping (see
    ``_group_names``) is moved, parameter by parameter, into the current groups. Any other state
    passes unchanged (torch then checks it as usual)."""
    groups = state_dict.get("param_groups", [])
    sizes = [len(g["params"]) for g in groups]
    if now == legacy or sizes != [len(g) for g in legacy] or sizes == [len(g) for g in now]:
        return None
    name_of = dict(zip((i for g in groups for i in g["params"]), (n for g in legacy for n in g)))
    new_id = {n: i for i, n in enumerate(n for g in now for n in g)}
    state = {new_id[name_of[i]]: s for i, s in state_dict["state"].items() if name_of.get(i) in new_id}
    regrouped, start = [], 0
    for g, names in zip(groups, now):
        regrouped.append(dict(g, params=list(range(start, start + len(names)))))
        start += len(names)
    warnings.warn("optimizer state from before the mask-token ablation's fix: regrouped by parameter; from "
                  "here on the decoder's unused mask_token is frozen and encoder_mask_token has the weight "
                  "decay of mask_token", UserWarning, stacklevel=2)
    return {"state": state, "param_groups": regrouped}


FUSED_DEVICES = ("cuda", "cpu")   # where torch.optim.AdamW(fused=True) has a kernel


def build_optimizer(model: torch.nn.Module, cfg_optim, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; torch's fused kernel on CUDA and CPU (``optim.fused``). It also
    loads the optimizer state of an ablation checkpoint written under the legacy grouping.

    Why fused on CPU too: the default there is the per-tensor loop (torch turns ``foreach`` on for
    CUDA only), a dozen small ops per parameter tensor. Measured side by side on the 2-core dev
    machine (``python -m benchmarks.adamw_cpu``, load average 1.8): 7.8 -> 1.7 ms a step for the
    nano MAE, 12.6 -> 2.3 ms for micro, about 4% of their whole training step at batch 64. Same
    update up to float rounding; the state dict has the same format, so runs resume across it."""
    groups = param_groups(model, cfg_optim.weight_decay, cfg_optim.decay_tokens)
    kwargs = {}
    if device.type in FUSED_DEVICES and cfg_optim.fused:
        kwargs["fused"] = True
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg_optim.betas), eps=cfg_optim.eps, **kwargs)
    now = _group_names(model, cfg_optim.decay_tokens)
    legacy = _group_names(model, cfg_optim.decay_tokens, legacy=True)
    opt.register_load_state_dict_pre_hook(functools.partial(_regroup_legacy_state, now, legacy))
    return opt
