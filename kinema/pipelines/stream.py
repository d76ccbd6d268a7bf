"""Streaming generation with a causal DiT: latent frames are sampled chunk by chunk and decoded as they arrive.

    for frames in stream_video(pipe, ["a red circle bouncing left and right"], frames=129, window=4):
        ...  # (B, 3, n, H, W) in [-1, 1]: the first frame comes after one chunk's sampling, not the whole video's

Each chunk runs the ordinary sampler (guidance, given frames and all) on its own latent frames, attending to the
past chunks through a `KVCache`, and the causal VAE decodes it with a `CausalCache` that carries over between chunks.
Without a window (or while the video is shorter than it) the frames equal `pipe.generate` of the same seed and
settings: streaming is the same sampling, reordered. A window of W latent frames bounds the past each chunk sees,
so cost and memory per chunk stay constant however long the video.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import torch

from kinema.dit.cache import KVCache
from kinema.vae.causal import CausalCache

log = logging.getLogger(__name__)


def chunk_slices(frames: int, chunk: int) -> list[slice]:
    """Latent frame 0 (the image frame) alone, then pieces of `chunk` latent frames."""
    return [slice(0, 1)] + [slice(s, min(s + chunk, frames)) for s in range(1, frames, chunk)]


def check_streamable(pipe, chunk: int, window: int | None) -> None:
    if pipe.dit.config.attention != "causal":
        raise ValueError(f"streaming needs a causal model; {pipe.name!r} uses {pipe.dit.config.attention!r} attention")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 latent frame, got {chunk}")
    if window is not None and window < chunk:
        raise ValueError(f"window ({window}) must hold at least one chunk ({chunk}) of latent frames")


@torch.no_grad()
def stream_latents(pipe, prompts: list[str], seeds: list[int] | None = None, image=None, chunk: int = 1,
                   window: int | None = None, **overrides) -> Iterator[torch.Tensor]:
    """Yields the sampled latents (B, C, n, H', W') chunk by chunk; see the module docstring."""
    check_streamable(pipe, chunk, window)
    s = pipe.settings(**overrides)
    seeds = list(seeds) if seeds is not None else [s.seed + i for i in range(len(prompts))]
    text, neg = pipe.encode_prompts(prompts, s.negative_prompt)
    noise = pipe.initial_noise(s, seeds)                                        # (B, C, T', H', W')
    clean, given = pipe.encode_keyframes(s, len(prompts), image)
    _, ph, pw = pipe.dit.config.patch_size
    cache = KVCache(pipe.dit.config.num_layers, (noise.shape[3] // ph) * (noise.shape[4] // pw), window)
    for part in chunk_slices(noise.shape[2], chunk):
        cache.start_chunk()
        latents = pipe.denoise(noise[:, :, part], text, neg, s, keyframes=(clean[:, :, part], given[:, part]),
                               kv_cache=cache)
        cache.end_chunk(latents.shape[2])
        yield latents


@torch.no_grad()
def stream_video(pipe, prompts: list[str], seeds: list[int] | None = None, image=None, chunk: int = 1,
                 window: int | None = None, **overrides) -> Iterator[torch.Tensor]:
    """Yields video frames (B, 3, n, H, W) in [-1, 1] as each latent chunk is sampled and decoded."""
    vae_cache, dtype = CausalCache(), next(pipe.vae.parameters()).dtype
    start, first = time.perf_counter(), True
    for latents in stream_latents(pipe, prompts, seeds, image, chunk, window, **overrides):
        frames = pipe.vae.decode_next(latents.to(dtype), vae_cache).float()
        if first:
            log.info("time to first frame: %.3f s", time.perf_counter() - start)
            first = False
        yield frames
