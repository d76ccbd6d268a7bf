import torch

from kinema.train.vae import noised_latents


def _latents(seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 3.0, 20.0])[None, :, None, None, None]
    return torch.randn(4, 3, 2, 4, 4, generator=g) * scales                         # (B, C, T, H, W)


def test_zero_noise_leaves_latents_unchanged():
    z = _latents()
    assert noised_latents(z, 0.0) is z


def test_noise_follows_each_channels_spread_and_scales_with_the_latents():
    z = _latents()
    torch.manual_seed(3)
    a = noised_latents(z, 0.3) - z
    torch.manual_seed(3)
    b = noised_latents(10 * z, 0.3) - 10 * z
    torch.testing.assert_close(b, 10 * a, rtol=1e-4, atol=1e-4)        # scaling the latents up cannot escape it
    per_channel = a.transpose(0, 1).flatten(1).std(dim=1)
    assert per_channel[0] < per_channel[1] < per_channel[2]
    assert (per_channel / z.transpose(0, 1).flatten(1).std(dim=1)).max() < 0.3


def test_each_clip_draws_its_own_noise_scale():
    z = _latents()
    torch.manual_seed(4)
    per_clip = (noised_latents(z, 0.3) - z).flatten(1).std(dim=1)
    assert per_clip.max() > 1.5 * per_clip.min()
