"""LARS (layer-wise adaptive rate scaling), the optimiser of MAE's linear probe.

Why: the linear-probe head sees BatchNorm-normalised features and very large batches (16k in the
paper); LARS rescales each weight matrix's update by the trust ratio ||w|| / ||g|| so the step size is
relative to the weight's own size, which makes one learning rate work across batch sizes.

Semantics (those of MAE's util/lars.py, written here from its definition):
    for a parameter with ndim > 1:   g <- g + wd * w
                                     g <- g * eta * ||w|| / ||g||   (1 if either norm is 0)
    for 1-D parameters (biases, norm scales): g is used as is (no weight decay, no trust ratio)
    mu <- momentum * mu + g;  w <- w - lr * mu
"""
from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum, weight decay and a per-tensor trust ratio on matrices (see module doc).

    `trust_coefficient` is eta; 1-D tensors skip both weight decay and the trust ratio.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"LARS: invalid settings lr={lr} weight_decay={weight_decay} "
                             f"momentum={momentum} trust_coefficient={trust_coefficient}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(w_norm)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["trust_coefficient"] * w_norm / u_norm, one)
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss
