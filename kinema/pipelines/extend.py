"""Video extension: continue a clip window after window, to any length.

Each window has the model's frame count. Its first latent frames are given: the causal VAE's latents of the last
`context` (1 + 4j) frames so far, held fixed while the rest is sampled (the keyframe mechanism of
image-to-video). The decoded window repeats the context frames; only the frames after them are appended.

Colour and brightness drift over a long continuation (the model renders the object's colour a little differently
each window: measured in docs/models/shapes.md). Every generated frame, and every reconstruction the input fades
into, is therefore colour-matched to the input's last frames (`kinema.video.colour_match`, by default per-channel
histogram matching; `match` is its strength, 0 turns it off), as colour-match nodes do in long-video workflows. It
assumes the continuation shows what the input shows; for a scene that should change colour (a sunset, a cut), turn
it down or off.

Generated frames are VAE decodings, the input's frames are not: the last `blend` frames before each join cross-fade
into their own reconstructions (the decoded context), so the first generated frame follows without a jump (the
reconstruction error, ~30 dB for the shapes VAE, is as large as a frame's motion). `blend=0` keeps every input
frame exactly as it was.
"""

from __future__ import annotations

import numpy as np
import torch

from kinema.video.colour_match import colour_match
from kinema.video.image import fit_image
from kinema.video.io import Video


BLEND = 4  # input frames faded into their reconstructions before the first generated frame (one latent frame)
MATCH = 1.0  # strength of the colour match of generated frames to the input's last frames (0: off)
COLOUR_METHOD = "histogram"  # kinema.video.colour_match's method; "palette" measured worse on continuations
#                              (docs/models/shapes.md, fifteenth session)


def match_to_input(frames: np.ndarray, anchor: np.ndarray, strength: float,
                   method: str = COLOUR_METHOD) -> np.ndarray:
    """Generated frames (T, H, W, 3) colour-matched to the input's last frames `anchor` (strength 0: as they are)."""
    return colour_match(frames, anchor, strength, method) if strength > 0 else frames


def cross_fade(own: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """The last K frames before a join, (K, H, W, 3) uint8, faded into their reconstructions: frame i gets weight
    (i + 1) / (K + 1) on `recon`, so each step moves 1 / (K + 1) of the way and the join the last step."""
    w = (np.arange(1, len(own) + 1, dtype=np.float64) / (len(own) + 1))[:, None, None, None]
    return np.clip(np.rint(own * (1 - w) + recon.astype(np.float64) * w), 0, 255).astype(np.uint8)


@torch.no_grad()
def extend_video(pipe, video: Video, prompt: str, frames: int, context: int = 5, seed: int = 0,
                 callback=None, blend: int = BLEND, match: float = MATCH, colour_method: str = COLOUR_METHOD,
                 **overrides) -> Video:
    """`video` continued to `frames` frames (1 + 4k) at the model's size; its own frames come first (the last
    `blend` of them, up to `context`, faded into their reconstructions), the generated ones colour-matched to its
    last frames with strength `match` (`colour_method`: kinema.video.colour_match's). A causal model continues in
    latent space (`extend_streamed`), any other window after window."""
    if blend < 0:
        raise ValueError(f"blend must be 0 or more frames, got {blend}")
    if not 0 <= match <= 1:
        raise ValueError(f"the colour-match strength must be in [0, 1], got {match}")
    if pipe.dit.config.attention == "causal":
        return extend_streamed(pipe, video, prompt, frames, seed, blend=blend, match=match,
                               colour_method=colour_method, **overrides)
    s = pipe.settings(seed=seed, **overrides)
    if (frames - 1) % 4 or frames <= video.num_frames:
        raise ValueError(f"--frames must be 1 + 4k and longer than the input ({video.num_frames} frames)")
    if (context - 1) % 4 or not 1 <= context < s.frames:
        raise ValueError(f"context must be 1 + 4j and shorter than the model's window of {s.frames} frames")
    if video.num_frames < context:
        raise ValueError(f"the input video has {video.num_frames} frames; at least {context} are needed")
    out = [fit_image(f, s.height, s.width) for f in video.frames]
    anchor = np.stack(out[-s.frames:])
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
        matched = match_to_input(decoded, anchor, match, colour_method)
        k = min(blend, context)
        if k:
            out[-k:] = list(cross_fade(np.stack(out[-k:]), matched[context - k:context]))
        out += list(matched[context:][: frames - len(out)])
        window += 1
    meta = {**s.to_dict(), "model": pipe.name, "prompt": prompt, "extended_from": video.num_frames,
            "context": context, "blend": min(blend, context), "colour_match": match, "colour_method": colour_method}
    return Video(np.stack(out), s.fps, meta)


@torch.no_grad()
def extend_streamed(pipe, video: Video, prompt: str, frames: int, seed: int = 0, window: int = 4,
                    blend: int = BLEND, match: float = MATCH, colour_method: str = COLOUR_METHOD,
                    **overrides) -> Video:
    """A causal model's extension: the input (its first 1 + 4j frames) is encoded once, its latents become the clean
    past of a stream (the last `window` latent frames attended to), and the new latent frames are sampled chunk by
    chunk (past the model's own clip length with its continuation guidance, `continue_guidance`) and decoded
    together with the input's, so nothing goes through the VAE twice and no window has a seam.
    The output starts with the input's own frames, the last `blend` of them faded into their reconstructions."""
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
    k = min(blend, n_in - 1)                                                          # frame 0 stays as it was
    tail = match_to_input(decoded[n_in - k:], kept[-s.frames:], match, colour_method)  # the fade's too
    if k:
        kept[n_in - k:] = cross_fade(kept[n_in - k:], tail[:k])
    generated = tail[k:]
    meta = {**s.to_dict(), "frames": frames, "model": pipe.name, "prompt": prompt, "extended_from": video.num_frames,
            "blend": k, "colour_match": match, "colour_method": colour_method}
    return Video(np.concatenate([kept, generated]), s.fps, meta)
