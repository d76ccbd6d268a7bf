"""ODE samplers for the velocity model: small stateless functions with one signature.

    sample_xxx(model, x, times, callback=None) -> x at times[-1]

`model(x, t)` returns the velocity v = noise - x0 at a batch-shaped time t (B,); `times` decreases from ~1 to 0.
Guidance, conditioning and per-token time handling all live inside `model` (see `guidance.py`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from kinema.flow.convention import TIMESTEP_SCALE

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


def quantised_timesteps(model: Velocity, times: torch.Tensor | None = None,
                        scale: float = TIMESTEP_SCALE) -> Velocity:
    """`model` fed floor(t * scale) / scale, as diffusers' and Wan's UniPC feed the network int64(σ·1000)
    while their updates use the float σ. Use it with `schedule.diffusers_flow_times` / `wan_flow_times`.

    Pass the float64 grid `times` for an exact match: each t is then snapped to the nearest grid value before the
    floor, because a grid value rounded to the sample's dtype (fp32) can land on the other side of an integer
    (σ·1000 = 667.0 in float64 → 667, but 666.99997 from fp32 → 666). Snapping also lets the sampler step on the
    float32-rounded grid (`diffusers_flow_times(..., fp32=True)`) while the timesteps come from the float64 one.
    Without `times`, t is floored as given, which is exact for float64 samples and float64 grids.
    The DiT then sees (k / scale) * scale, which equals k up to one fp32 ulp.
    """
    grid = None if times is None else torch.as_tensor(times, dtype=torch.float64)

    def quantised(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t64 = t.to(torch.float64)
        if grid is not None:
            g = grid.to(t.device)
            t64 = g[(t64[:, None] - g[None]).abs().argmin(dim=1)]
        return model(x, (torch.floor(t64 * scale) / scale).to(t.dtype))
    return quantised


def _log_snr(t: float) -> float:
    """λ = log(α / σ) = log((1 - t) / t) on the flow path (α = 1 - t, σ = t); ±inf at the ends."""
    if t <= 0.0:
        return math.inf
    if t >= 1.0:
        return -math.inf
    return math.log1p(-t) - math.log(t)


def _bh2_step(x: torch.Tensor, s: float, t: float, m0: torch.Tensor, res) -> torch.Tensor:
    """The data-prediction exponential-integrator step from s to t with a residual, B(h) = expm1(-h) ("bh2"):

        x_t = (t / s) x - (1 - t) expm1(-h) (m0 + res),   h = λ(t) - λ(s).

    With res = 0 this is the DDIM / DPM-Solver++(1) step; at t = 0 it returns m0 (h = inf, expm1(-h) = -1)."""
    e = math.expm1(-(_log_snr(t) - _log_snr(s)))
    return (t / s) * x - ((1.0 - t) * e) * (m0 + res)


def _unip_residual(s: float, t: float, m0: torch.Tensor, s_prev: float | None, m_prev: torch.Tensor | None):
    """UniP-2 (bh2) residual from the previous data prediction; 0 (first order) without one.

    rho = 1/2 and D1 = (m_prev - m0) / r with r = (λ(s_prev) - λ(s)) / h, as in the paper's bh2 variant."""
    if m_prev is None:
        return 0.0
    lam_s = _log_snr(s)
    r = (_log_snr(s_prev) - lam_s) / (_log_snr(t) - lam_s)
    return (0.5 / r) * (m_prev - m0)


def _unic_residual(s: float, t: float, m0: torch.Tensor, m_t: torch.Tensor,
                   s_prev: float | None, m_prev: torch.Tensor | None):
    """UniC residual that corrects the step s -> t with the new data prediction m_t at t.

    Order 1 (no m_prev): rho = 1/2, as diffusers simplifies it. Order 2: rho solves [[1, 1], [r, 1]] rho = b with
    b_k = k! hh phi_{k+1}(hh) / B(h), hh = -h, B(h) = expm1(hh), r = (λ(s_prev) - λ(s)) / h."""
    if m_prev is None:
        return 0.5 * (m_t - m0)
    lam_s = _log_snr(s)
    h = _log_snr(t) - lam_s
    r = (_log_snr(s_prev) - lam_s) / h
    hh = -h
    e = math.expm1(hh)
    g2 = e / hh - 1.0                         # hh phi_2(hh)
    g3 = g2 / hh - 0.5                        # hh phi_3(hh)
    b1, b2 = g2 / e, 2.0 * g3 / e
    rho_prev = (b1 - b2) / (1.0 - r)          # Cramer on [[1, 1], [r, 1]]
    rho_t = b1 - rho_prev
    return (rho_prev / r) * (m_prev - m0) + rho_t * (m_t - m0)


@torch.no_grad()
def sample_unipc(model: Velocity, x: torch.Tensor, times: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
    Models"), the B(h) = expm1(-h) variant "bh2", order 2, on the data prediction x0 = x - t v: one model call per
    step. Each new evaluation first corrects the previous step (UniC), then a UniP step predicts the next point.

    Matches diffusers' `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)` with its
    defaults (solver_order=2, bh2, predict_x0, lower_order_final, final_sigmas_type="zero", corrector on): first
    order at the first and the last step, UniC order 1 after the first step then 2, no correction of the final
    sample. For numerical parity use `schedule.diffusers_flow_times` and `quantised_timesteps(model, times)`.
    Works with grids starting at t = 1 too (the first steps then reduce to DDIM/Euler, their exact limit).
    """
    ts = [float(t) for t in times]
    n = len(ts) - 1
    x_last = m_last = m_prev = None            # previous corrected sample, data predictions at ts[i-1], ts[i-2]
    for i in range(n):
        m = x - ts[i] * model(x, _t(x, ts[i]))
        if i > 0:   # UniC: redo the step ts[i-1] -> ts[i] from x_last with the new evaluation m
            s_prev = ts[i - 2] if i >= 2 else None
            x = _bh2_step(x_last, ts[i - 1], ts[i], m_last,
                          _unic_residual(ts[i - 1], ts[i], m_last, m, s_prev, m_prev))
        use_prev = m_last is not None and i < n - 1      # first order at the first and last step
        res = _unip_residual(ts[i], ts[i + 1], m, ts[i - 1] if use_prev else None, m_last if use_prev else None)
        x_last, m_prev, m_last = x, m_last, m
        x = _bh2_step(x, ts[i], ts[i + 1], m, res)
        if callback:
            callback(i + 1, n)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "unipc": sample_unipc}
