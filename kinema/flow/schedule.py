"""Time grids for sampling and time draws for training (t = 1 is noise; see `convention`)."""

from __future__ import annotations

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
