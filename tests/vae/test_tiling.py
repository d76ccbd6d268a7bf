import pytest
import torch

from kinema.eval.vae import psnr
from kinema.vae.model import VAEConfig, VideoVAE
from kinema.vae.tiling import decode_tiled
from tests.conftest import tiny_vae


@torch.no_grad()
def test_tiled_decode_matches_whole_decode():
    vae = tiny_vae()
    z = torch.randn(1, 4, 3, 24, 40) * 0.5
    whole = vae.decode(z)
    tiled = decode_tiled(vae, z, tile=12, overlap=6)
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) >= 40


@torch.no_grad()
def test_tiled_decode_wan_config():
    cfg = VAEConfig(z_dim=4, base_dim=4, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                    latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    torch.manual_seed(0)
    vae = VideoVAE(cfg).eval()
    z = torch.randn(1, 4, 2, 28, 36) * 0.5  # 4 stages: a wider receptive field needs a wider overlap
    assert psnr(decode_tiled(vae, z, tile=24, overlap=12), vae.decode(z)) >= 40


def test_small_latents_are_decoded_whole_and_bad_overlap_refused():
    vae = tiny_vae()
    z = torch.randn(1, 4, 2, 8, 8)
    assert torch.equal(decode_tiled(vae, z, tile=16, overlap=4), vae.decode(z))
    with pytest.raises(ValueError):
        decode_tiled(vae, z, tile=4, overlap=4)
