"""Video extension: continue a clip window after window, to any length.

Each window has the model's frame count. Its first latent frames are given: the causal VAE's latents of the last
`context` (1 + 4j) frames so far, held fixed while the rest is sampled (the keyframe mechanism of
image-to-video). The decoded window repeats the context frames; only the frames after them are appended. A
per-channel affine colour match, measured between the decoded context and the real context frames, is applied
to each new window so that colour and brightness do not drift from window to window.
"""

from __future__ import annotations

import numpy as np
import torch

from kinema.video.image import fit_image
from kinema.video.io import Video


def colour_match(new: np.ndarray, decoded_context: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Map new frames' colours by the per-channel affine map taking decoded_context to context."""
    src = decoded_context.reshape(-1, 3).astype(np.float64)
    dst = context.reshape(-1, 3).astype(np.float64)
    scale = dst.std(0) / np.maximum(src.std(0), 1.0)
    scale = np.clip(scale, 0.8, 1.25)  # a correction, not a re-grade
    out = (new.astype(np.float64) - src.mean(0)) * scale + dst.mean(0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@torch.no_grad()
def extend_video(pipe, video: Video, prompt: str, frames: int, context: int = 5, seed: int = 0,
                 callback=None, **overrides) -> Video:
    """`video` continued to `frames` frames (1 + 4k) at the model's size; its own frames come first.
    A causal model continues in latent space (`extend_streamed`), any other window after window."""
    if pipe.dit.config.attention == "causal":
        return extend_streamed(pipe, video, prompt, frames, seed, **overrides)
    s = pipe.settings(seed=seed, **overrides)
    if (frames - 1) % 4 or frames <= video.num_frames:
        raise ValueError(f"--frames must be 1 + 4k and longer than the input ({video.num_frames} frames)")
    if (context - 1) % 4 or not 1 <= context < s.frames:
        raise ValueError(f"context must be 1 + 4j and shorter than the model's window of {s.frames} frames")
    if video.num_frames < context:
        raise ValueError(f"the input video has {video.num_frames} frames; at least {context} are needed")
    out = [fit_image(f, s.height, s.width) for f in video.frames]
    text, neg = pipe.encode_prompts([prompt], s.negative_prompt)
    n_given = 1 + (context - 1) // 4
    window = 0
    while len(out) < frames:
        ctx = np.stack(out[-context:])                                      # (context, H, W, 3)
        clean = torch.zeros(1, *pipe.latent_shape(s), device=pipe.device)
        clean[:, :, :n_given] = pipe.vae.encode(Video(ctx).to_tensor().to(pipe.device))
        given = torch.zeros(1, clean.shape[2], dtype=torch.bool, device=pipe.device)
        given[:, :n_given] = True
        noise = pipe.initial_noise(s, [s.seed + window])
        decoded = Video.from_tensor(pipe.decode(pipe.denoise(noise, text, neg, s, callback, (clean, given)))).frames
        new = colour_match(decoded[context:], decoded[:context], ctx)
        out += list(new[: frames - len(out)])
        window += 1
    meta = {**s.to_dict(), "model": pipe.name, "prompt": prompt, "extended_from": video.num_frames,
            "context": context}
    return Video(np.stack(out), s.fps, meta)


@torch.no_grad()
def extend_streamed(pipe, video: Video, prompt: str, frames: int, seed: int = 0, window: int = 4,
                    **overrides) -> Video:
    """A causal model's extension: the input (its first 1 + 4j frames) is encoded once, its latents become the clean
    past of a stream (the last `window` latent frames attended to), and the new latent frames are sampled chunk by
    chunk and decoded together with the input's, so nothing goes through the VAE twice and no window has a seam.
    The output starts with the input's own frames."""
    from kinema.pipelines.stream import stream_latents

    s = pipe.settings(seed=seed, **overrides)
    n_in = 1 + 4 * ((video.num_frames - 1) // 4)
    if (frames - 1) % 4 or frames <= n_in:
        raise ValueError(f"--frames must be 1 + 4k and longer than the input ({video.num_frames} frames)")
    kept = np.stack([fit_image(f, s.height, s.width) for f in video.frames[:n_in]])
    latents = pipe.vae.encode(Video(kept).to_tensor().to(pipe.device))                # (1, C, 1 + j, H', W')
    overrides = {k: v for k, v in overrides.items() if k != "frames"}
    new = list(stream_latents(pipe, [prompt], [seed], window=window, context=latents, frames=frames, **overrides))
    decoded = Video.from_tensor(pipe.decode(torch.cat([latents, *new], dim=2))[0]).frames
    meta = {**s.to_dict(), "frames": frames, "model": pipe.name, "prompt": prompt, "extended_from": video.num_frames}
    return Video(np.concatenate([kept, decoded[n_in:]]), s.fps, meta)
