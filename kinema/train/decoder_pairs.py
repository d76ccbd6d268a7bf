"""Decoder training pairs made by the generator: a real clip, and the latents the DiT makes of it.

A decoder trained on the encoder's latents decodes those well, but the DiT's samples are not quite those. Measured
on the shapes model (`docs/models/shapes.md`): a real square reads fill ratio 1.0, its VAE reconstruction ~0.94,
and a generated square ~0.88, rounder than any reconstruction; even a real square's latents noised only to t = 0.3
and sampled back by the DiT come out at ~0.90. So the DiT draws corners its own (rounded) way, at every noise level.

Here a real clip's latents are noised to a time `tau` and sampled back to 0 by the model, with the clip's caption and
the model's own sampler and guidance (SDEdit): the result keeps the clip's layout, colour and motion, and carries
the DiT's way of drawing them. Training the decoder on (these latents -> the real clip), beside its usual
(encoder latents -> clip) pairs, teaches it to draw the real thing from what the DiT makes. The encoder stays frozen,
so the DiT's latent space does not move.

    pairs = build_pairs(pipe, n=1536, seed=0, strength=(0.25, 0.75))
    video, cover, z = pair_batch(pairs, 6, rng)     # (B, 3, T, H, W) in [-1, 1], (B, 1, T, H, W), raw latents
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from kinema.data.shapes import random_training_clip
from kinema.flow.convention import add_noise
from kinema.flow.samplers import SAMPLERS
from kinema.flow.schedule import sampling_times

log = logging.getLogger(__name__)


@torch.no_grad()
def regenerate(pipe, z0: torch.Tensor, captions: list[str], tau: float, generator: torch.Generator) -> torch.Tensor:
    """Normalised latents z0 (B, C, T', H', W') noised to the last time of the model's sampling grid at or below
    `tau`, then sampled to 0 with the captions, the model's sampler and guidance. tau = 0 returns z0."""
    s = pipe.settings()
    times = sampling_times(s.steps, s.shift)
    times = times[times <= tau + 1e-9]                                  # the grid's tail, from <= tau down to 0
    if len(times) < 2:
        return z0
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    x = add_noise(z0, noise, torch.full((len(z0),), float(times[0]), dtype=z0.dtype))
    text, neg = pipe.encode_prompts(captions, s.negative_prompt)
    return SAMPLERS[s.sampler](pipe.guided_model(pipe.experts, text, neg, s), x, times)


@torch.no_grad()
def build_pairs(pipe, n: int, seed: int, strength: tuple[float, float] = (0.25, 0.75), batch: int = 32,
                frames: int | None = None) -> dict:
    """n rendered training clips at the model's size and length, each with the raw (un-normalised) latents the
    model regenerates from it at a time drawn uniformly from `strength` per batch.
    Returns frames (N, T, H, W, 3) uint8, cover (N, T, H, W) uint8 (object coverage x 255), latents (N, C, T', H',
    W') float32 raw, taus (N,)."""
    lo, hi = strength
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"strength must be 0 <= low <= high <= 1, got {strength}")
    s = pipe.settings(frames=frames)
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    out = {"frames": [], "cover": [], "latents": [], "taus": []}
    for start in range(0, n, batch):
        clips = [random_training_clip(rng, s.frames, s.height, s.width) for _ in range(min(batch, n - start))]
        video = torch.from_numpy(np.stack([c.frames for c in clips])).float().div(127.5).sub(1)
        tau = float(rng.uniform(lo, hi))
        z = regenerate(pipe, pipe.vae.encode(video.permute(0, 4, 1, 2, 3), chunked=False),
                       [c.caption for c in clips], tau, g)
        out["latents"].append(pipe.vae.denormalise(z).float())
        out["frames"].append(torch.from_numpy(np.stack([c.frames for c in clips])))
        out["cover"].append(torch.from_numpy(np.stack([np.rint(c.coverage * 255) for c in clips]).astype(np.uint8)))
        out["taus"].append(torch.full((len(clips),), tau))
        log.info("decoder pairs: %d / %d regenerated", start + len(clips), n)
    return {k: torch.cat(v) for k, v in out.items()}


def pair_batch(pairs: dict, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random batch: real clips (B, 3, T, H, W) in [-1, 1], coverage (B, 1, T, H, W) in [0, 1], raw latents."""
    idx = torch.from_numpy(rng.integers(len(pairs["latents"]), size=batch))
    video = pairs["frames"][idx].float().div(127.5).sub(1).permute(0, 4, 1, 2, 3).contiguous()
    cover = pairs["cover"][idx].float().div(255)[:, None]
    return video, cover, pairs["latents"][idx]
