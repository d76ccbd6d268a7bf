import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kinema.flow.convention import add_noise, noise_from_velocity, velocity_target, x0_from_velocity
from kinema.flow.guidance import conditional_velocity, guided_velocity
from kinema.flow.samplers import euler_step, sample_euler, sample_heun
from kinema.flow.schedule import logit_normal_times, sampling_times, shift_time


def test_time_convention_endpoints_and_inverses():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.testing.assert_close(add_noise(x0, noise, torch.zeros(3)), x0)   # t = 0 is data
    torch.testing.assert_close(add_noise(x0, noise, torch.ones(3)), noise)  # t = 1 is noise
    t = torch.tensor([0.1, 0.5, 0.9])
    xt, v = add_noise(x0, noise, t), velocity_target(x0, noise)
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(x0_from_velocity(xt, v, t), x0)
    torch.testing.assert_close(noise_from_velocity(xt, v, t), noise)
    # the velocity is the time derivative of the path
    eps = 1e-3
    dxdt = (add_noise(x0, noise, t + eps) - add_noise(x0, noise, t - eps)) / (2 * eps)
    torch.testing.assert_close(dxdt, v, rtol=1e-3, atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(t=st.floats(0.01, 1.0), t_next=st.floats(0.0, 0.99))
def test_euler_step_closed_form(t, t_next):
    """With the exact velocity of a straight path, one Euler step lands exactly on the path."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    xt = add_noise(x0, noise, torch.tensor(t, dtype=torch.float64))
    stepped = euler_step(xt, velocity_target(x0, noise), t, t_next)
    torch.testing.assert_close(stepped, add_noise(x0, noise, torch.tensor(t_next, dtype=torch.float64)))


def test_samplers_follow_a_straight_path_exactly():
    """With the velocity of the straight path from noise x1 to x*, every sampler lands on x*."""
    target = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64)
    x1 = torch.randn(1, 3, dtype=torch.float64)
    model = lambda x, t: (x1 - target).expand_as(x)  # noqa: E731
    for sampler in (sample_euler, sample_heun):
        out = sampler(model, x1, sampling_times(8, shift=3.0))
        torch.testing.assert_close(out, target)


def test_heun_is_more_accurate_than_euler_on_a_curved_flow():
    model = lambda x, t: -x * (1 + t[:, None])  # noqa: E731  dx/dt = -(1+t) x: x(0) = x(1) exp(1.5)
    x1 = torch.ones(1, 1, dtype=torch.float64)
    exact = torch.exp(torch.tensor(1.5, dtype=torch.float64))
    err = lambda s: (s(model, x1, sampling_times(10)) - exact).abs().item()  # noqa: E731
    assert err(sample_heun) < err(sample_euler) / 10


def test_sampling_times_and_shift():
    t = sampling_times(10, shift=3.0)
    assert len(t) == 11 and t[0] == 1.0 and t[-1] == 0.0 and bool((t[1:] < t[:-1]).all())
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert bool((shift_time(u, 3.0) >= u).all())  # shift > 1 moves time towards noise
    torch.testing.assert_close(shift_time(u, 1.0), u)
    draws = logit_normal_times(1000, generator=torch.Generator().manual_seed(0))
    assert 0 < draws.min() and draws.max() < 1 and abs(draws.median().item() - 0.5) < 0.05


class _ToyDiT(torch.nn.Module):
    """v = x * mean(text) + t/1000: the text changes the output, so guidance has an effect."""

    def forward(self, x, t, text):
        return x * text.mean(dim=(1, 2)).view(-1, 1, 1) + t.view(-1, 1, 1) / 1000


def test_guidance_scale_one_is_the_conditional_model():
    dit, x, t = _ToyDiT(), torch.randn(2, 3, 4), torch.tensor([0.3, 0.7])
    text, neg = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(guided_velocity(dit, text, neg, 1.0)(x, t), conditional_velocity(dit, text)(x, t))
    cond, uncond = conditional_velocity(dit, text)(x, t), conditional_velocity(dit, neg)(x, t)
    torch.testing.assert_close(guided_velocity(dit, text, neg, 4.0)(x, t), uncond + 4.0 * (cond - uncond))
