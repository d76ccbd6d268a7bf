"""3D rotary position embedding (Wan): the head dim is split into (time, height, width) parts.

For head dim d: h_dim = w_dim = 2 * (d // 6) and t_dim = d - h_dim - w_dim (128 -> 44/42/42). Each axis has its
own frequencies 1 / 10000^(2j / axis_dim) over its own slice, tables are built in float64 and rotate interleaved
pairs (x[2i], x[2i+1]) as complex numbers: the table is e^(i angle), complex64 (L, d/2), and rotating is one complex
multiply (one pass over q or k instead of six).
"""

from __future__ import annotations

from functools import lru_cache

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(n: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(n, dim // 2) rotation angles of positions 0..n-1 along one axis, float64."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)


@lru_cache(maxsize=64)
def _rope_table(grid: tuple[int, int, int], head_dim: int, frame_offset: int) -> torch.Tensor:
    f, h, w = grid
    dt, dh, dw = axis_dims(head_dim)
    angles = torch.cat([
        _axis_angles(frame_offset + f, dt)[frame_offset:, None, None, :].expand(f, h, w, dt // 2),
        _axis_angles(h, dh)[None, :, None, :].expand(f, h, w, dh // 2),
        _axis_angles(w, dw)[None, None, :, :].expand(f, h, w, dw // 2),
    ], dim=-1).reshape(f * h * w, head_dim // 2)  # (L, d/2), tokens in (f, h, w) row-major order
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def rope_table(grid: tuple[int, int, int], head_dim: int, device: torch.device,
               frame_offset: int = 0) -> torch.Tensor:
    """Rotation table e^(i angle), complex64 (L, head_dim / 2), for a post-patch grid (F, H, W) whose frames start
    at `frame_offset` (a chunk of a streamed video); cached per grid and offset."""
    return _rope_table(tuple(int(g) for g in grid), head_dim, int(frame_offset)).to(device)


def apply_rope(x: torch.Tensor, table: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate interleaved pairs of each head of x (B, L, D = nh * hd) by the table (L, hd/2); computed in fp32,
    returned in x's dtype. Applied before the split into heads, where x is still contiguous (no copy)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (num_heads, -1, 2)))     # (B, L, nh, hd/2) complex
    return torch.view_as_real(pairs * table[:, None]).flatten(-3).type_as(x)
