"""timm's ViT block with a leaner attention forward; parameter names unchanged (``attn.qkv``, ``attn.proj``).

timm's ``Attention`` splits the fused qkv output with ``permute(2, 0, 3, 1, 4)``; in backward that costs a
stack into a (3, B, H, N, D) buffer and then a second copy to undo the permutation. Splitting along the
"3" axis of a (B, N, 3, H, D) view instead lets the gradients of q, k and v be stacked straight into the
layout the qkv linear layer wants: one copy fewer per block, the same arithmetic and the same
``scaled_dot_product_attention`` call. Used when the block has no q/k norm, gate or attention dropout
(the MAE configuration); otherwise timm's own forward runs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block


class FusedQKVAttention(Attention):
    """timm ``Attention`` (same parameters) whose forward avoids a needless copy of the qkv gradient."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        lean = (self.fused_attn and self.gate is None and isinstance(self.q_norm, nn.Identity)
                and isinstance(self.k_norm, nn.Identity) and isinstance(self.norm, nn.Identity)
                and not (self.training and self.attn_drop.p > 0))
        if not lean:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).unbind(2)  # each (B, N, H, D)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=attn_mask, is_causal=is_causal)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(x))


def vit_block(dim: int, num_heads: int, mlp_ratio: float, norm_layer) -> Block:
    """A pre-norm ViT block as the official MAE builds it (qkv bias, GELU MLP), with the lean attention."""
    blk = Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, attn_layer=FusedQKVAttention)
    blk.attn.fused_attn = True  # scaled_dot_product_attention whatever timm's global default is
    return blk
