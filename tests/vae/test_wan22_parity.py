"""The Wan 2.2 VAE (diffusers' AutoencoderKLWan(is_residual=True), patch 2, 16x spatial) as a kinema VideoVAE config:
numerical parity in fp32 on CPU, and the original release's key names.

Random normal weights, `save_pretrained`, loaded back through `load_diffusers_vae` (the real loading path).
"""

import re

import pytest
import torch

from kinema.convert.wan import load_diffusers_vae, vae_config_from_diffusers
from kinema.convert.wan22 import (WAN22_LATENTS_MEAN, convert_original_vae22, vae22_config_from_state,
                                  wan22_vae_config)
from kinema.vae.model import VideoVAE

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5
CONFIGS = {  # tiny Wan 2.2 topologies: decoder wider than the encoder, as in the release (160 / 256)
    "wan22-mini": dict(base_dim=4, decoder_base_dim=6, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    "two-res-blocks": dict(base_dim=4, decoder_base_dim=4, z_dim=4, dim_mult=[1, 1, 2, 2], num_res_blocks=2),
}
SHAPES = [(1, 32, 32), (5, 32, 32), (9, 32, 48)]


def _rel(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


def tiny_wan22_vae(kw: dict, seed: int = 0):
    """A diffusers Wan 2.2 VAE with random weights and statistics."""
    g = torch.Generator().manual_seed(seed)
    z = kw["z_dim"]
    ref = diffusers.AutoencoderKLWan(**kw, is_residual=True, patch_size=2, in_channels=12, out_channels=12,
                                     temperal_downsample=[False, True, True], scale_factor_spatial=16,
                                     latents_mean=(torch.randn(z, generator=g) * 0.5).tolist(),
                                     latents_std=(torch.rand(z, generator=g) + 0.5).tolist()).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return ref


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    ref = tiny_wan22_vae(CONFIGS[request.param], seed=len(request.param))
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return ref, load_diffusers_vae(path)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@torch.no_grad()
def test_encode_decode_match_diffusers(pair, shape):
    ref, vae = pair
    assert vae.config.spatial_compression == 16 and vae.config.patch_size == 2
    video = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dist = ref.encode(video).latent_dist
    mean, logvar = vae.encode_moments(video)
    assert _rel(mean, dist.mode()) <= TOL and _rel(logvar, dist.logvar) <= TOL
    z = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    expected = ref.decode(z).sample
    assert expected.shape == (1, 3, *shape)
    assert _rel(vae.decode_raw(z).clamp(-1, 1), expected) <= TOL


@torch.no_grad()
def test_whole_clip_path_matches_diffusers(pair):
    ref, vae = pair
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mean, _ = vae.encode_moments(video, chunked=False)
    assert _rel(mean, ref.encode(video).latent_dist.mode()) <= TOL
    assert _rel(vae.decode_raw(mean, chunked=False).clamp(-1, 1), ref.decode(mean).sample) <= TOL


def test_released_config_and_keys():
    """diffusers' Wan 2.2 VAE config (the TI2V-5B release's) is kinema's `wan22_vae_config()`, key for key."""
    kw = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
              patch_size=2, scale_factor_spatial=16, latents_mean=list(WAN22_LATENTS_MEAN),
              latents_std=[1.0] * 48)
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan(**kw)
        cfg = vae_config_from_diffusers(dict(ref.config))
        vae = VideoVAE(cfg)
    assert cfg == wan22_vae_config(latents_std=(1.0,) * 48)
    from kinema.convert.wan import convert_diffusers_vae

    ours, theirs = vae.state_dict(), convert_diffusers_vae(ref.state_dict())
    assert set(ours) == set(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    assert sum(p.numel() for p in vae.parameters()) == sum(p.numel() for p in ref.parameters())


# ---- the original release's names (a test-side inverse, checked against diffusers' own converter) ----------------

_PARTS = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.", "norm2.gamma": "residual.3.gamma",
          "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}
_TOP = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.", "decoder.norm_out.": "decoder.head.0.",
        "decoder.conv_out.": "decoder.head.2."}


def _part(rest):
    return next((new + rest[len(old):] for old, new in _PARTS.items() if rest.startswith(old)), rest)


def to_original_vae22(state: dict, num_res_blocks: int) -> dict:
    """diffusers AutoencoderKLWan(is_residual=True) names -> the original Wan2.2_VAE.pth names."""
    out, middle = {}, {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}
    for key, value in state.items():
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            new = f"encoder.downsamples.{m.group(1)}.downsamples.{m.group(2)}.{_part(m.group(3))}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsampler\.(.*)$", key):
            new = f"encoder.downsamples.{m.group(1)}.downsamples.{num_res_blocks}.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            new = f"decoder.upsamples.{m.group(1)}.upsamples.{m.group(2)}.{_part(m.group(3))}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsampler\.(.*)$", key):
            new = f"decoder.upsamples.{m.group(1)}.upsamples.{num_res_blocks + 1}.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.0)\.(.*)$", key):
            new = f"{m.group(1)}.mid_block.{middle[m.group(2)]}.{_part(m.group(3))}".replace("mid_block", "middle")
        else:
            new = next(new + key[len(old):] for old, new in _TOP.items() if key.startswith(old))
        out[new] = value
    return out


def test_original_names_of_the_release():
    """The released Wan2.2_VAE.pth layout (W22 vae2_2.py; diffusers' convert script `convert_vae_22`) loads."""
    with torch.device("meta"):
        full = diffusers.AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                                          in_channels=12, out_channels=12, patch_size=2,
                                          latents_mean=[0.0] * 48, latents_std=[1.0] * 48).state_dict()
    original = to_original_vae22(full, 2)
    for key in ("encoder.downsamples.0.downsamples.2.resample.1.weight",      # stage 0: 2 blocks, then its resample
                "encoder.downsamples.1.downsamples.2.time_conv.weight",
                "decoder.upsamples.0.upsamples.3.time_conv.weight",           # 3 blocks, then the upsample
                "decoder.upsamples.3.upsamples.2.residual.6.weight", "encoder.middle.1.to_qkv.weight", "conv1.weight"):
        assert key in original, key
    ours = convert_original_vae22(original)
    cfg = vae22_config_from_state(ours)
    assert cfg == wan22_vae_config()
    with torch.device("meta"):
        assert ours.keys() == VideoVAE(cfg).state_dict().keys()


@torch.no_grad()
def test_original_layout_loads_the_same_vae():
    ref = tiny_wan22_vae(CONFIGS["wan22-mini"])
    mean, std = tuple(ref.config.latents_mean), tuple(ref.config.latents_std)
    state = convert_original_vae22(to_original_vae22(ref.state_dict(), 1))
    vae = VideoVAE(vae22_config_from_state(state, mean, std)).eval()
    vae.load_state_dict(state)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert _rel(vae.encode_moments(video)[0], ref.encode(video).latent_dist.mode()) <= TOL
