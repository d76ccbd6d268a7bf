import pytest
import torch

from kinema.vae.causal import CausalCache, CausalConv3d
from kinema.vae.model import VAEConfig, VideoVAE
from tests.conftest import tiny_vae


def _video(frames, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


@torch.no_grad()
def test_encoding_is_causal():
    """Encoding the first 1 + 4j frames gives the first 1 + j latents, for every j."""
    vae, video = tiny_vae(), _video(13)
    full = vae.encode(video)
    for j in range(3):
        part = vae.encode(video[:, :, : 1 + 4 * j])
        torch.testing.assert_close(part, full[:, :, : 1 + j], rtol=0, atol=1e-6)


@torch.no_grad()
def test_future_frames_do_not_change_past_latents():
    vae, video = tiny_vae(), _video(9)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]
    a, b = vae.encode(video), vae.encode(changed)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2], rtol=0, atol=1e-6)
    assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-3


@torch.no_grad()
def test_decoding_is_causal():
    vae = tiny_vae()
    z = torch.randn(1, 4, 4, 8, 8)
    full = vae.decode(z)
    torch.testing.assert_close(vae.decode(z[:, :, :2]), full[:, :, :5], rtol=0, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 5, 17])
@torch.no_grad()
def test_chunked_equals_whole(frames):
    vae, video = tiny_vae(), _video(frames)
    torch.testing.assert_close(vae.encode(video, chunked=True), vae.encode(video, chunked=False), rtol=0, atol=1e-5)
    z = vae.encode(video)
    torch.testing.assert_close(vae.decode(z, chunked=True), vae.decode(z, chunked=False), rtol=0, atol=1e-5)


@torch.no_grad()
def test_full_3d_config_is_causal_and_chunkable():
    """The Wan-style config (full 3D convs, no patchify, 4 stages) keeps the same properties."""
    cfg = VAEConfig(z_dim=4, base_dim=4, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                    latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    torch.manual_seed(0)
    vae, video = VideoVAE(cfg).eval(), _video(9)
    z = vae.encode(video)
    assert z.shape == (1, 4, 3, 4, 4)
    torch.testing.assert_close(z, vae.encode(video, chunked=False), rtol=0, atol=1e-5)
    torch.testing.assert_close(vae.encode(video[:, :, :5]), z[:, :, :2], rtol=0, atol=1e-6)
    assert vae.decode(z).shape == (1, 3, 9, 32, 32)


def test_shapes_and_bad_sizes():
    vae = tiny_vae()
    assert vae.latent_shape(17, 64, 64) == (4, 5, 8, 8)
    assert vae.latent_shape(1, 32, 48) == (4, 1, 4, 6)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.latent_shape(10, 64, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.latent_shape(17, 60, 64)


def test_normalisation_round_trip():
    n = 4
    cfg = VAEConfig.from_dict({**tiny_vae().config.to_dict(), "latents_mean": (0.5,) * n, "latents_std": (2.0,) * n})
    vae = VideoVAE(cfg)
    z = torch.randn(2, n, 3, 4, 4)
    torch.testing.assert_close(vae.denormalise(vae.normalise(z)), z)
    torch.testing.assert_close(vae.normalise(torch.full_like(z, 0.5)), torch.zeros_like(z))


def test_causal_conv_cache_matches_padding():
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 7, 6, 6)
    cache = CausalCache()
    chunked = torch.cat([conv(x[:, :, s], cache) for s in (slice(0, 1), slice(1, 2), slice(2, 5), slice(5, 7))], 2)
    torch.testing.assert_close(chunked, conv(x), rtol=0, atol=1e-6)


def _refined_vae(dim=4):
    """The tiny VAE with a refine head whose output conv is not at its zero start."""
    from dataclasses import replace

    torch.manual_seed(1)
    vae = VideoVAE(replace(tiny_vae().config, refine_dim=dim)).eval()
    torch.nn.init.normal_(vae.decoder.refine.conv_out.weight, std=0.1)
    return vae


@torch.no_grad()
def test_refine_head_keeps_decoding_causal_chunked_and_streamable():
    from kinema.vae.causal import CausalCache

    vae = _refined_vae()
    z = torch.randn(1, 4, 4, 8, 8)
    whole = vae.decode(z, chunked=False)
    assert whole.shape == (1, 3, 13, 64, 64)
    torch.testing.assert_close(vae.decode(z, chunked=True), whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(vae.decode(z[:, :, :2]), whole[:, :, :5], rtol=0, atol=1e-6)
    cache = CausalCache()
    pieces = [vae.decode_next(z[:, :, :1], cache), vae.decode_next(z[:, :, 1:], cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=0, atol=1e-5)


def test_refine_head_needs_an_even_patch():
    with pytest.raises(ValueError, match="even patch_size"):
        VAEConfig(z_dim=4, base_dim=4, patch_size=1, refine_dim=4, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
