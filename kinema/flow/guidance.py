"""Classifier-free guidance as a wrapper around the velocity model.

    v = v_uncond + g * (v_cond - v_uncond)

The conditional and unconditional branches run as one batch of 2B. With g == 1 the wrapper returns the
conditional model unchanged (no second pass), as diffusers does.
"""

from __future__ import annotations

from typing import Callable

import torch

from kinema.flow.convention import TIMESTEP_SCALE

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def conditional_velocity(dit, text: torch.Tensor) -> Velocity:
    """The DiT as a velocity function of (x, t) for one text conditioning (B, Lt, D)."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return dit(x, t * TIMESTEP_SCALE, text)
    return model


def guided_velocity(dit, text: torch.Tensor, negative: torch.Tensor, scale: float) -> Velocity:
    """CFG over `text` against `negative` (both (B, Lt, D)); scale 1 is the plain conditional model."""
    if scale == 1.0:
        return conditional_velocity(dit, text)
    both = torch.cat([negative, text])

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_uncond, v_cond = dit(torch.cat([x, x]), torch.cat([t, t]) * TIMESTEP_SCALE, both).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)
    return model


def with_given_frames(model: Velocity, clean: torch.Tensor, given: torch.Tensor, tokens_per_frame: int) -> Velocity:
    """Hold some latent frames fixed (image-to-video, keyframes, extension), as Wan2.2 TI2V does.

    clean (B, C, T', H, W) holds the given frames' latents; given (B, T') marks them. Before every model call the
    given frames are reset to their clean latents and their tokens get time 0; their velocity is returned as 0,
    so any sampler leaves them exactly as given.
    """
    frame_mask = given[:, None, :, None, None]  # (B, 1, T', 1, 1)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.where(frame_mask, clean, x)
        t_tokens = torch.where(given, torch.zeros_like(t)[:, None], t[:, None])   # (B, T')
        v = model(x, t_tokens.repeat_interleave(tokens_per_frame, dim=1))          # per-token time (B, L)
        return torch.where(frame_mask, torch.zeros_like(v), v)
    return fn
