"""The one time convention of kinema, written once.

    t = 1 is pure noise, t = 0 is data;   x_t = (1 - t) * x0 + t * noise;   the model predicts v = noise - x0.

So dx_t/dt = v, an ODE step from t to t' is x_t' = x_t + (t' - t) * v, and x0 = x_t - t * v.
The DiT is fed the timestep t * 1000 (Wan's and diffusers' scale).
"""

from __future__ import annotations

import torch

TIMESTEP_SCALE = 1000.0  # the network sees t * 1000


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t of shape (B,) -> (B, 1, 1, ...) broadcastable against `like`."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target of flow matching: v = noise - x0."""
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean sample implied by a velocity: x0 = x_t - t v."""
    return x_t - _expand(t, x_t) * v


def noise_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The noise implied by a velocity: noise = x_t + (1 - t) v."""
    return x_t + (1 - _expand(t, x_t)) * v
