"""Numerical parity of kinema's VideoVAE with diffusers' AutoencoderKLWan (Wan 2.1 layout), fp32 on CPU.

Each reference model gets random normal weights (so that no layer is trivially zero or identity, as freshly
initialised ones can be: the original Wan zero-inits the attention projection), is written with `save_pretrained`,
and kinema loads it back from disk through `load_diffusers_vae` (config.json -> VAEConfig, safetensors -> state
dict), the real loading path.
"""

import dataclasses

import pytest
import torch

from kinema.convert.wan import convert_diffusers_vae, load_diffusers_vae, vae_config_from_diffusers
from kinema.vae.model import VAEConfig, VideoVAE

diffusers = pytest.importorskip("diffusers")
AutoencoderKLWan = diffusers.AutoencoderKLWan

TOL = 1e-5  # max |kinema - diffusers| / max |diffusers|

# Tiny Wan 2.1-style configs (is_residual False, no patchify): the Wan 2.1 topology at width 8, a 3-stage VAE that
# halves time in its first stage, and one with a single temporal downsample in the middle (4x spatial / 2x time
# chunks in kinema vs diffusers' fixed 4-frame chunks) and 3 residual blocks per stage.
CONFIGS = {
    "wan21-mini": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                       temperal_downsample=[False, True, True]),
    "3-stage-time-first": dict(base_dim=6, z_dim=4, dim_mult=[1, 1, 2], num_res_blocks=1,
                               temperal_downsample=[True, True]),
    "one-time-down": dict(base_dim=4, z_dim=4, dim_mult=[2, 1, 1, 1], num_res_blocks=3,
                          temperal_downsample=[False, True, False]),
}
SHAPES = [(1, 32, 32), (5, 32, 32), (9, 32, 32), (5, 24, 40)]  # (frames, height, width); the last is non-square


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(diffusers reference, kinema VAE loaded from the reference's save_pretrained folder)."""
    kw = dict(CONFIGS[request.param])
    z = kw["z_dim"]
    g = torch.Generator().manual_seed(sum(map(ord, request.param)))
    kw["latents_mean"] = (torch.randn(z, generator=g) * 0.5).tolist()
    kw["latents_std"] = (torch.rand(z, generator=g) + 0.5).tolist()
    ref = AutoencoderKLWan(**kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        ref.decoder.conv_out.bias.copy_(torch.tensor([1.0, -1.0, 0.0]))  # so that the output clamp matters
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return ref, load_diffusers_vae(path)


def _video(frames, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@torch.no_grad()
def test_encode_matches_diffusers(pair, shape):
    ref, vae = pair
    video = _video(*shape)
    dist = ref.encode(video).latent_dist
    mean, logvar = vae.encode_moments(video)
    assert mean.shape[2:] == vae.latent_shape(*shape)[1:]
    assert _rel(mean, dist.mode()) <= TOL
    assert _rel(logvar, dist.logvar) <= TOL


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@torch.no_grad()
def test_decode_matches_diffusers(pair, shape):
    ref, vae = pair
    c, t, h, w = vae.latent_shape(*shape)
    z = torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(1))
    expected = ref.decode(z).sample
    assert expected.shape == (1, 3, *shape)
    assert (expected.abs() == 1).any() and (expected.abs() < 1).any()  # the clamp is exercised
    assert _rel(vae.decode_raw(z).clamp(-1, 1), expected) <= TOL


@torch.no_grad()
def test_whole_clip_path_matches_diffusers(pair):
    """kinema's unchunked path (two chunks: frame 0, then the rest) equals diffusers' chunked one."""
    ref, vae = pair
    video = _video(9, 32, 32, seed=2)
    mean, _ = vae.encode_moments(video, chunked=False)
    assert _rel(mean, ref.encode(video).latent_dist.mode()) <= TOL
    z = torch.randn_like(mean)
    assert _rel(vae.decode_raw(z, chunked=False).clamp(-1, 1), ref.decode(z).sample) <= TOL


@torch.no_grad()
def test_normalised_latents_match_the_pipeline_convention(pair):
    """kinema's encode/decode normalise inside; diffusers' Wan pipelines do (z - mean) / std around the VAE."""
    ref, vae = pair
    video = _video(5, 32, 32, seed=3)
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    raw = ref.encode(video).latent_dist.mode()
    torch.testing.assert_close(vae.encode(video), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    z = torch.randn_like(raw)
    torch.testing.assert_close(vae.decode(z), ref.decode(z * std + mean).sample, rtol=1e-5, atol=1e-5)


def test_default_diffusers_config_is_kinemas_default_vae():
    """diffusers' AutoencoderKLWan() is the Wan 2.1 VAE, and so is kinema's VAEConfig() (plus Wan's statistics)."""
    with torch.device("meta"):
        ref = AutoencoderKLWan()
        cfg = vae_config_from_diffusers(dict(ref.config))
        vae = VideoVAE(cfg)
    assert dataclasses.replace(cfg, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16) == VAEConfig()
    assert cfg.latents_mean[0] == pytest.approx(-0.7571) and cfg.latents_std[-1] == pytest.approx(1.9160)
    ours = vae.state_dict()
    theirs = convert_diffusers_vae(ref.state_dict())
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("change, message", [
    (dict(is_residual=True), "patch_size 2"),          # residual stages are the Wan 2.2 VAE, which patchifies
    (dict(patch_size=2), "channels 3/3"),              # a 2x2 patchify takes 12 channels
    (dict(in_channels=12, out_channels=12), "channels"),
    (dict(attn_scales=[0.5]), "attn_scales"),
    (dict(temperal_downsample=[False, True]), "temperal_downsample"),
    (dict(z_dim=4), "latents_mean"),  # diffusers' default statistics have 16 values
])
def test_unsupported_configs_raise(change, message):
    base = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], temperal_downsample=[False, True, True])
    with pytest.raises(ValueError, match=message):
        vae_config_from_diffusers({**base, **change})


@pytest.mark.parametrize("kw, message", [
    (dict(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], attn_scales=[1.0]), "attn_scales"),
])
def test_unsupported_checkpoints_raise(kw, message):
    with torch.device("meta"):
        state = AutoencoderKLWan(**kw, latents_mean=[0.0] * 4, latents_std=[1.0] * 4).state_dict()
    with pytest.raises(ValueError, match=message):
        convert_diffusers_vae(state)
