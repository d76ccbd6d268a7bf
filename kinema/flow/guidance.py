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
