"""Fixed 2-D sine-cosine position embeddings, laid out exactly as the official MAE code.

The official ``get_2d_sincos_pos_embed`` builds ``np.meshgrid(grid_w, grid_h)`` and encodes the
first grid with the first half of the channels, so the first half of each vector encodes the patch's
*column* and the second half its *row*. Released checkpoints (and Hugging Face's port) depend on that
layout, so we reproduce it rather than the "textbook" [row | column] order.
"""
from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim) as [sin(pos * omega) | cos(pos * omega)], computed in float64."""
    if embed_dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even width, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """(1 + H*W or H*W, embed_dim) float32 table; row-major patch order; a zero row first for the cls token."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
