"""Time grids for sampling and time draws for training (t = 1 is noise; see `convention`)."""

from __future__ import annotations

import numpy as np
import torch


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift t' = s t / (1 + (s - 1) t): s > 1 spends more steps / samples at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def sampling_times(steps: int, shift: float = 1.0, t_max: float = 1.0) -> torch.Tensor:
    """steps + 1 decreasing times from t_max to 0 (uniform, then shifted); float64 for exact stepping."""
    t = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)
    return shift_time(t, shift)


def logit_normal_times(n: int, mean: float = 0.0, std: float = 1.0, shift: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times t = shift(sigmoid(N(mean, std))) (SD3's logit-normal draw), shape (n,)."""
    t = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    return shift_time(t, shift)


def _np_linspace(start: float, stop: float, num: int) -> torch.Tensor:
    """numpy's linspace in float64: bit-identical to the references (torch.linspace rounds differently)."""
    return torch.from_numpy(np.linspace(start, stop, num, dtype=np.float64))


def _as_stored(t: torch.Tensor, fp32: bool) -> torch.Tensor:
    """The grid as the references store it for their updates (float32) when `fp32`, kept in float64."""
    return t.to(torch.float32).to(torch.float64) if fp32 else t


def diffusers_flow_times(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000,
                         fp32: bool = False) -> torch.Tensor:
    """The σ grid of diffusers' `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
    flow_shift=shift)` after `set_timesteps(steps)`, in float64, with the final 0 appended (steps + 1 values).

    σ = linspace(1, 1/N, steps + 1)[:-1], shifted, then σ0 -= 1e-6 when σ0 ≈ 1 (diffusers avoids log(0) there).
    diffusers feeds the network int64(σ·N) of these float64 values; reproduce that with
    `kinema.flow.samplers.quantised_timesteps(model, times)`. Its updates use them rounded to float32, which
    `fp32=True` reproduces (this matters most for σ0 = 1 - 1e-6, whose float32 α0 = 1 - σ0 is 1.3% larger). For the
    closest parity: `sample_unipc(quantised_timesteps(model, grid), x, diffusers_flow_times(n, s, fp32=True))`
    with `grid = diffusers_flow_times(n, s)`.
    """
    t = _np_linspace(1.0, 1.0 / num_train_timesteps, steps + 1)[:-1]
    t = shift_time(t, shift)
    if abs(float(t[0]) - 1.0) < 1e-6:
        t[0] -= 1e-6
    return _as_stored(torch.cat([t, t.new_zeros(1)]), fp32)


def wan_flow_times(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000,
                   fp32: bool = False) -> torch.Tensor:
    """The σ grid of the original Wan `FlowUniPCMultistepScheduler.set_timesteps(steps, shift=shift)` (built with
    shift 1), in float64: σ = linspace(σ_max, 0, steps + 1)[:-1], shifted, then a final 0 (steps + 1 values).

    σ_max = 1 - 1/N read back from Wan's float32 training table (0.99900001... for N = 1000), as Wan does. Like
    diffusers, Wan feeds the network int64(σ·N) of the float64 values (see `kinema.flow.samplers.quantised_timesteps`)
    and updates with them rounded to float32 (`fp32=True`).
    """
    sigma_max = float(torch.tensor(1.0 - 1.0 / num_train_timesteps, dtype=torch.float32))
    t = _np_linspace(sigma_max, 0.0, steps + 1)[:-1]
    return _as_stored(torch.cat([shift_time(t, shift), torch.zeros(1, dtype=torch.float64)]), fp32)
