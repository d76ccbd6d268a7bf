"""Two denoising experts as one velocity function (Wan 2.2 A14B's mixture of experts).

A high-noise expert handles the steps with timestep t >= boundary (t = 1 is noise), a low-noise expert the rest;
each is a whole velocity function of its own, so each has its own guidance scale (wrap each in
`guidance.guided_velocity` first). The samplers see one stateless function, as for a single model.
"""

from __future__ import annotations

import torch

from kinema.flow.convention import TIMESTEP_SCALE
from kinema.flow.guidance import Velocity

# How far below the boundary a time still counts as reaching it, in network timesteps (t * 1000): the references
# compare the integer timestep int64(sigma * 1000) with boundary * 1000, which kinema's `quantised_timesteps` feeds
# as k / 1000 in fp32 (k * 1000 up to one fp32 ulp, ~6e-5), so the comparison must forgive that rounding.
_ULP_SLACK = 1e-3


def switch_experts(high: Velocity, low: Velocity, boundary: float) -> Velocity:
    """`high` where the step's time t >= `boundary` (a fraction of the time range, e.g. 0.875), else `low`.

    t is (B,) or per-token (B, L); the step's time is its largest value (given frames sit at t = 0). Samples of one
    batch on different sides of the boundary (never in kinema's samplers) get each their own expert.
    """
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary must be in [0, 1], got {boundary}")
    limit = boundary * TIMESTEP_SCALE - _ULP_SLACK

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = t.reshape(t.shape[0], -1).amax(dim=1).double() * TIMESTEP_SCALE  # (B,)
        use_high = step >= limit
        if bool(use_high.all()):
            return high(x, t)
        if not bool(use_high.any()):
            return low(x, t)
        return torch.where(use_high.view(-1, *(1,) * (x.ndim - 1)), high(x, t), low(x, t))
    return model
