"""Spatially tiled VAE decoding: peak memory bounded by the tile size, not the frame size.

Decoding is already chunked in time (one latent frame at a time, `VideoVAE.decode`). Here the latent is also cut
into overlapping spatial tiles; each tile is decoded on its own and the overlaps are cross-faded with linear ramps,
so tile seams do not show.
"""

from __future__ import annotations

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering [0, size) with the given stride; the last tile ends exactly at size."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """(n,) weights: linear fade-in over the first `overlap` and fade-out over the last, unless at an edge."""
    w = torch.ones(n)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = ramp
        if not at_end:
            w[-overlap:] = ramp.flip(0)
    return w


@torch.no_grad()
def decode_tiled(vae, z: torch.Tensor, tile: int = 32, overlap: int = 8) -> torch.Tensor:
    """Normalised latents (B, C, T', H', W') -> video (B, 3, T, H, W) in [-1, 1], decoded tile by tile.

    `tile` and `overlap` are in latent pixels; the pixel overlap is overlap x the VAE's spatial compression.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    sc = vae.config.spatial_compression
    _, _, _, h, w = z.shape
    if h <= tile and w <= tile:
        return vae.decode(z)
    out = weight = None
    rows, cols = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            part = vae.decode(z[:, :, :, y:y + tile, x:x + tile]).float()       # (B, 3, T, th, tw)
            th, tw = part.shape[-2:]
            wy = _ramp(th, overlap * sc, i == 0, i == len(rows) - 1)
            wx = _ramp(tw, overlap * sc, j == 0, j == len(cols) - 1)
            mask = (wy[:, None] * wx[None, :]).to(part.device)
            if out is None:
                out = part.new_zeros(*part.shape[:3], h * sc, w * sc)
                weight = part.new_zeros(h * sc, w * sc)
            out[..., y * sc:y * sc + th, x * sc:x * sc + tw] += part * mask
            weight[y * sc:y * sc + th, x * sc:x * sc + tw] += mask
    return (out / weight).to(z.dtype)
