"""UniPC (bh2, order 2) for flow matching against diffusers' UniPCMultistepScheduler, plus accuracy checks."""

import math

import pytest
import torch

from kinema.flow.samplers import SAMPLERS, quantised_timesteps, sample_euler, sample_unipc
from kinema.flow.schedule import diffusers_flow_times, sampling_times, wan_flow_times

STEPS_SHIFTS = [(n, s) for n in (4, 10, 25) for s in (1.0, 3.0, 5.0)]


def _scheduler(shift: float, steps: int):
    schedulers = pytest.importorskip("diffusers.schedulers")
    sched = schedulers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                               num_train_timesteps=1000, flow_shift=shift)
    sched.set_timesteps(steps)
    return sched


def _toy_velocity(channels: int = 4, seed: int = 0):
    """A deterministic velocity, nonlinear in x and in t: v = A x + tanh(x) B(t) + b t + c sin(3t)."""
    g = torch.Generator().manual_seed(seed)
    a = 0.4 * torch.randn(channels, channels, generator=g, dtype=torch.float64) / math.sqrt(channels)
    b, c = torch.randn(2, channels, 1, 1, generator=g, dtype=torch.float64)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).reshape(-1, 1, 1, 1)
        lin = torch.einsum("ij,bjhw->bihw", a.to(x.dtype), x)
        return lin + 0.3 * torch.tanh(x) * torch.cos(2 * tt) + b.to(x.dtype) * tt + c.to(x.dtype) * torch.sin(3 * tt)
    return model


@pytest.mark.parametrize("steps,shift", STEPS_SHIFTS + [(50, 5.0), (3, 1.0), (9, 1.0), (1, 1.0)])
def test_diffusers_flow_times_match_the_scheduler(steps, shift):
    sched = _scheduler(shift, steps)
    times = diffusers_flow_times(steps, shift)
    assert times.dtype == torch.float64 and len(times) == steps + 1 and times[-1] == 0
    assert torch.equal(times.to(torch.float32), sched.sigmas)
    assert torch.equal(diffusers_flow_times(steps, shift, fp32=True), sched.sigmas.to(torch.float64))
    assert torch.equal(torch.floor(times[:-1] * 1000).long(), sched.timesteps)   # diffusers' int64(σ·1000)


def test_wan_flow_times():
    times = wan_flow_times(50, 5.0)
    assert len(times) == 51 and times[-1] == 0 and bool((times[:-1] > times[1:]).all())
    assert abs(float(times[0]) - 5 * 0.999 / (1 + 4 * 0.999)) < 1e-7          # 0.9998, the original's first σ
    assert abs(float(times[-2]) - 0.0925) < 1e-4
    torch.testing.assert_close(wan_flow_times(4, 1.0)[:-1], torch.linspace(0.999, 0, 5, dtype=torch.float64)[:-1],
                               atol=1e-7, rtol=0)


def _diffusers_loop(model, noise: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    sched, x = _scheduler(shift, steps), noise.clone()
    for t in sched.timesteps:
        v = model(x, (t / 1000).to(torch.float64).expand(x.shape[0]).to(x.dtype))
        x = sched.step(v, t, x).prev_sample
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps,shift", STEPS_SHIFTS)
def test_sample_unipc_matches_diffusers(steps, shift, dtype):
    model = _toy_velocity()
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    grid, stored = diffusers_flow_times(steps, shift), diffusers_flow_times(steps, shift, fp32=True)
    ref = _diffusers_loop(model, noise, steps, shift)
    ours = sample_unipc(quantised_timesteps(model, grid), noise, stored)   # diffusers steps on float32 σ
    assert ours.dtype == dtype
    assert (ours - ref).abs().max().item() <= 1e-5
    # on the exact float64 grid the only difference is diffusers' float32 σ (α0 = 1 - σ0 is 1.3% off at σ0 = 1-1e-6)
    plain = sample_unipc(quantised_timesteps(model, grid), noise, grid)
    assert (plain - ref).abs().max().item() <= 3e-5


def test_quantised_timesteps_snaps_fp32_times_to_the_grid():
    seen = []
    times = diffusers_flow_times(3, 1.0)      # σ·1000 = 999.999, 667.0, 333.99999999999994: floor 999, 667, 333

    def record(x, t):
        seen.append(round(float(t[0]) * 1000))
        return torch.zeros_like(x)
    sample_unipc(quantised_timesteps(record, times), torch.zeros(1, 2), times)   # fp32 sample: 667 -> 666.99997
    assert seen == [999, 667, 333]
    seen.clear()
    sample_unipc(quantised_timesteps(record), torch.zeros(1, 2, dtype=torch.float64), times)
    assert seen == [999, 667, 333]


@pytest.mark.parametrize("times", [diffusers_flow_times(10, 3.0), sampling_times(7, 5.0), wan_flow_times(4, 1.0),
                                   diffusers_flow_times(1, 1.0)])
def test_unipc_follows_a_straight_path_exactly(times):
    """With the constant velocity of the straight path from noise x1 to x*, UniPC lands on x*."""
    target = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64)
    x1 = torch.tensor([[0.3, 0.7, -1.1]], dtype=torch.float64)
    start = (1 - times[0]) * target + times[0] * x1
    out = SAMPLERS["unipc"](lambda x, t: (x1 - target).expand_as(x), start, times)
    torch.testing.assert_close(out, target, atol=1e-12, rtol=0)


def test_unipc_beats_euler_on_a_curved_ode():
    """dx/dt = -(1 + t) x from t = 1 to 0 has x(0) = x(1) e^{1.5}; 10 UniPC steps beat 10 Euler steps."""
    x1 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    exact = x1 * math.exp(1.5)
    model = lambda x, t: -(1 + t[:, None]) * x  # noqa: E731
    for times in (sampling_times(10), diffusers_flow_times(10, 3.0)):
        err_unipc = (sample_unipc(model, x1, times) - exact).abs().max().item()
        err_euler = (sample_euler(model, x1, times) - exact).abs().max().item()
        assert err_unipc < 0.2 * err_euler, (err_unipc, err_euler)


def test_unipc_reports_progress():
    calls = []
    sample_unipc(lambda x, t: torch.zeros_like(x), torch.ones(1, 2), sampling_times(5),
                 lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(1, 6)]
