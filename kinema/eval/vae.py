"""Reconstruction quality of the video VAE on rendered clips (held-out (colour, shape) pairs by default)."""

from __future__ import annotations

import numpy as np
import torch

from kinema.data.shapes import all_scenes, render_clip


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_psnr(vae, n: int = 48, seed: int = 0, frames: int = 17, size: int = 64,
                        held_out: bool = True, batch: int = 16) -> dict[str, float]:
    """Mean / min per-clip PSNR of encode -> decode on n random clips of held-out (or training) scenes."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes(held_out=held_out)
    values = []
    for start in range(0, n, batch):
        clips = [render_clip(scenes[rng.integers(len(scenes))], rng, frames, size, size)
                 for _ in range(min(batch, n - start))]
        x = torch.from_numpy(np.stack([c.frames for c in clips])).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
        # quantise the reconstruction to 8 bits, as a written video would be
        y = ((vae.decode(vae.encode(x)).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
        values += [psnr(a, b) for a, b in zip(x, y)]
    return {"psnr_mean": float(np.mean(values)), "psnr_min": float(np.min(values)), "clips": len(values)}
