"""ODE samplers for the velocity model: small stateless functions with one signature.

    sample_xxx(model, x, times, callback=None) -> x at times[-1]

`model(x, t)` returns the velocity v = noise - x0 at a batch-shaped time t (B,); `times` decreases from ~1 to 0.
Guidance, conditioning and per-token time handling all live inside `model` (see `guidance.py`).
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int], None] | None


def _t(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v: x + (t_next - t) v (exact when v is constant along the path)."""
    return x + (t_next - t) * v


@torch.no_grad()
def sample_euler(model: Velocity, x: torch.Tensor, times: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """Euler's method (first order): one model call per step."""
    n = len(times) - 1
    for i in range(n):
        x = euler_step(x, model(x, _t(x, times[i])), float(times[i]), float(times[i + 1]))
        if callback:
            callback(i + 1, n)
    return x


@torch.no_grad()
def sample_heun(model: Velocity, x: torch.Tensor, times: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """Heun's method (second order, trapezoidal): 2 model calls per step.

    Unlike a denoiser's derivative (x - x0) / sigma, the velocity is defined at t = 0, so the last step is
    corrected too.
    """
    n = len(times) - 1
    for i in range(n):
        t, t_next = float(times[i]), float(times[i + 1])
        v = model(x, _t(x, t))
        v_next = model(euler_step(x, v, t, t_next), _t(x, t_next))
        x = euler_step(x, 0.5 * (v + v_next), t, t_next)
        if callback:
            callback(i + 1, n)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}
