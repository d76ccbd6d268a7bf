"""Streaming generation with a causal DiT: latent frames are sampled chunk by chunk and decoded as they arrive.

    for frames in stream_video(pipe, ["a red circle bouncing left and right"], frames=129, window=4):
        ...  # (B, 3, n, H, W) in [-1, 1]: the first frame comes after one chunk's sampling, not the whole video's

Each chunk runs the ordinary sampler (guidance, given frames and all) on its own latent frames, attending to the
past chunks through a `KVCache` (see `kinema/dit/cache.py` for the two kinds of past, "clean" and "joint"), and the
causal VAE decodes it with a `CausalCache` that carries over between chunks. A window of W latent frames bounds the
past each chunk sees, so cost and memory per chunk stay constant however long the video.

The chunks after the model's own clip length continue a past rather than set up the prompt's scene; they take the
settings' continuation guidance (`continue_guidance`, `continue_guidance_2`), as the chunks after an extended
video's input do. Classifier-free guidance pushes each chunk towards what the text alone suggests and weakens how
closely it follows the past's motion (docs/models/shapes.md, sixteenth session).

A model trained with noised conditions (`kinema train --given-noise`) can take its past noised (`context_noise`):
each finished chunk enters the cache noised to that time, so small errors in it are not copied into every later
chunk (GameNGen's noise augmentation). The noise is each sample's own (`ContextNoise`), drawn chunk after chunk.

Past the window the model no longer sees the start, and colours drift slowly; `colour_anchored` holds them: the
first frames (the model's own length) become the colour reference that every later frame is colour-matched to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch

from kinema.dit.cache import KVCache
from kinema.flow.convention import add_noise
from kinema.vae.causal import CausalCache
from kinema.video.colour_match import ColourReference
from kinema.video.io import Video

log = logging.getLogger(__name__)
CONTEXT_SEED = 104_729  # the streamed past's noise (context_noise) draws from seed + this


class ContextNoise:
    """Noise for the streamed past: one generator per sample (seed + CONTEXT_SEED), drawn chunk after chunk, so a
    stream is reproducible and a sample's draws do not depend on the others in its batch."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(seed + CONTEXT_SEED) for seed in seeds]

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (B, ...), on its device and dtype."""
        return torch.stack([torch.randn(like.shape[1:], generator=g) for g in self.generators]).to(like)


def chunk_slices(frames: int, chunk: int, start: int = 0) -> list[slice]:
    """Latent frame 0 (the image frame) alone, then pieces of `chunk` latent frames; from `start` on."""
    first = [slice(0, 1)] if start == 0 else []
    return first + [slice(s, min(s + chunk, frames)) for s in range(max(start, 1), frames, chunk)]


def check_streamable(pipe, chunk: int, window: int | None) -> None:
    modes = {dit.config.attention for dit in pipe.experts} - {"causal"}
    if modes:
        raise ValueError(f"streaming needs a causal model; {pipe.name!r} uses {modes.pop()!r} attention")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 latent frame, got {chunk}")
    if window is not None and window < chunk:
        raise ValueError(f"window ({window}) must hold at least one chunk ({chunk}) of latent frames")


@torch.no_grad()
def stream_latents(pipe, prompts: list[str], seeds: list[int] | None = None, image=None, chunk: int = 1,
                   window: int | None = None, past: str = "clean", use_cache: bool = True,
                   context: torch.Tensor | None = None, **overrides) -> Iterator[torch.Tensor]:
    """Yields the sampled latents (B, C, n, H', W') chunk by chunk.

    `context` (B, C, k, H', W'): normalised latents of a video's first k latent frames to continue (extension):
    they go into the cache as the clean past (clean even with `context_noise`, which is for the model's own
    frames), and only the frames after them are sampled.

    past="clean": each chunk is sampled with the chunks before it (the last `window` latent frames) held clean,
    through the KV cache; `use_cache=False` recomputes that past in every call instead (same result, slower: the
    reference the cache is tested against). past="joint": the past at the chunk's own noise level (cache only),
    which equals ordinary joint sampling of the whole video."""
    check_streamable(pipe, chunk, window)
    if past == "joint" and not use_cache:
        raise ValueError("a joint past without a cache is ordinary sampling: use pipe.generate")
    s = pipe.settings(**overrides)
    seeds = list(seeds) if seeds is not None else [s.seed + i for i in range(len(prompts))]
    text, neg = pipe.encode_prompts(prompts, s.negative_prompt)
    noise = pipe.initial_noise(s, seeds)                                        # (B, C, T', H', W')
    clean, given = pipe.encode_keyframes(s, len(prompts), image)
    _, ph, pw = pipe.dit.config.patch_size
    tokens = (noise.shape[3] // ph) * (noise.shape[4] // pw)
    caches = [KVCache(dit.config.num_layers, tokens, window, past) for dit in pipe.experts]  # one per expert
    if any(pipe.context_times(s)) and not (use_cache and past == "clean"):
        raise ValueError("context noise applies to a clean past recorded in the KV cache (past='clean', cached)")
    noises = ContextNoise(seeds)
    done = noise[:, :, :0]
    if context is not None:
        if past != "clean" or image is not None or context.shape[2] >= noise.shape[2]:
            raise ValueError("a context continues a clean past, without an image, and must be shorter than the video")
        done = context.to(noise)
        if use_cache:
            _start(caches)
            _record(pipe, done, text, neg, s, caches, None)  # a real video's frames: clean, nothing to forget
            _end(caches, done.shape[2])
    opening = pipe.latent_shape(replace(s, frames=pipe.defaults.frames))[1]  # the model's own clip, latent frames
    for part in chunk_slices(noise.shape[2], chunk, done.shape[2]):
        cs = pipe.continuation(s) if part.start >= opening else s
        if not use_cache:
            lo = 0 if window is None else max(0, part.start - window)
            latents = _sample_after(pipe, done[:, :, lo:], noise[:, :, part], clean[:, :, part], given[:, part],
                                    text, neg, cs)
        else:
            _fit_guidance(caches, pipe.expert_guidance(cs), len(seeds))
            _start(caches)
            latents = pipe.denoise(noise[:, :, part], text, neg, cs, keyframes=(clean[:, :, part], given[:, part]),
                                   kv_cache=caches)
            if past == "clean":
                _record(pipe, latents, text, neg, cs, caches, noises)
            _end(caches, latents.shape[2])
        if not use_cache:  # the cache-free reference recomputes the past from the latents themselves
            done = torch.cat([done, latents], dim=2)
        yield latents


def _sample_after(pipe, past, noise, clean, given, text, neg, s) -> torch.Tensor:
    """Sample a chunk with the past latent frames prepended as given (clean, time 0) frames; no cache."""
    held = torch.ones(past.shape[0], past.shape[2], dtype=torch.bool, device=past.device)
    keyframes = (torch.cat([past, clean], dim=2), torch.cat([held, given], dim=1))
    return pipe.denoise(torch.cat([past, noise], dim=2), text, neg, s, keyframes=keyframes)[:, :, past.shape[2]:]


def _fit_guidance(caches: list[KVCache], guidance: list[float], batch: int) -> None:
    """A past recorded under guidance holds 2 x batch rows, the unconditional branch then the conditional one
    (`guided_velocity`'s batch); an expert that samples on without guidance (`continue_guidance` 1) keeps the
    conditional half, which is what an unguided stream would have recorded."""
    for cache, g in zip(caches, guidance, strict=True):
        if g == 1.0 and cache.batch == 2 * batch:
            cache.keep_rows(slice(batch, None))
        elif g != 1.0 and cache.batch == batch:
            raise ValueError("a stream sampled without guidance cannot take it up later (continue_guidance)")


def _start(caches: list[KVCache]) -> None:
    for cache in caches:
        cache.start_chunk()


def _end(caches: list[KVCache], frames: int) -> None:
    for cache in caches:
        cache.end_chunk(frames)


def _record(pipe, latents, text, neg, s, caches: list[KVCache], noises: ContextNoise | None) -> None:
    """One call of each expert on the finished chunk, at time 0 or noised to its context time (`noises` None:
    clean, for a given context), with the same guidance batch as sampling: their keys and values join their
    caches (a two-expert model's high-noise expert needs its own past too)."""
    dits = [pipe._dit_in(latents.dtype, dit) for dit in pipe.experts]
    recorders = [lambda x, t, c, dit=dit, cache=cache: dit(x, t, c, kv=cache.record_slot())
                 for dit, cache in zip(dits, caches, strict=True)]
    times = pipe.context_times(s) if noises is not None else [0.0] * len(caches)
    eps = noises.draw(latents) if any(times) else None
    for model, tc in zip(pipe.guided_experts(recorders, text, neg, s), times, strict=True):
        t = torch.full((latents.shape[0],), tc, dtype=latents.dtype, device=latents.device)
        model(add_noise(latents, eps, t) if tc else latents, t)


@torch.no_grad()
def stream_video(pipe, prompts: list[str], seeds: list[int] | None = None, image=None, chunk: int = 1,
                 window: int | None = None, past: str = "clean", **overrides) -> Iterator[torch.Tensor]:
    """Yields video frames (B, 3, n, H, W) in [-1, 1] as each latent chunk is sampled and decoded."""
    vae_cache, dtype = CausalCache(), next(pipe.vae.parameters()).dtype
    start, first = time.perf_counter(), True
    for latents in stream_latents(pipe, prompts, seeds, image, chunk, window, past, **overrides):
        frames = pipe.vae.decode_next(latents.to(dtype), vae_cache).float()
        if first:
            log.info("time to first frame: %.3f s", time.perf_counter() - start)
            first = False
        yield frames


def colour_anchored(chunks: Iterator[torch.Tensor], frames: int, strength: float = 1.0,
                    method: str = "palette") -> Iterator[torch.Tensor]:
    """Video chunks (B, 3, n, H, W) in [-1, 1] as they come; the first `frames` frames pass unchanged and become
    each sample's colour reference, every later frame is colour-matched to it (`kinema.video.colour_match`,
    `method` "palette" or "histogram"; `strength` 0: all unchanged)."""
    reference, have, refs = [], 0, None
    for chunk in chunks:
        head, tail = chunk[:, :, : max(frames - have, 0)], chunk[:, :, max(frames - have, 0):]
        if head.shape[2]:
            reference.append(_to_uint8(head))
            have += head.shape[2]
        if tail.shape[2] and strength > 0:
            if refs is None:  # the reference is complete: its statistics once per sample
                refs = [ColourReference(r, method) for r in np.concatenate(reference, axis=1)]  # (B, frames, H, W, 3)
            matched = np.stack([ref.match(f, strength) for f, ref in zip(_to_uint8(tail), refs)])
            tail = torch.from_numpy(matched).to(chunk.device, chunk.dtype).div(127.5).sub(1).permute(0, 4, 1, 2, 3)
        yield torch.cat([head, tail], dim=2)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8, as the video writer rounds them."""
    return np.stack([Video.from_tensor(v).frames for v in video])
