"""The Wan 2.2 VAE (TI2V-5B: 48 latent channels, 2x2 patchify, residual stage shortcuts) -> kinema's `VideoVAE`.

kinema's VAE stores the encoder's stages as one flat `encoder.down_blocks` list (residual blocks, then the stage's
downsample) and the decoder's as `decoder.up_blocks.i.{resnets.j, upsamplers.0}`. The Wan 2.2 checkpoints nest them:

- diffusers (`AutoencoderKLWan(is_residual=True)`): `encoder.down_blocks.i.{resnets.j, downsampler}`,
  `decoder.up_blocks.i.{resnets.j, upsampler}`; everything else as in the Wan 2.1 layout.
- the original release (`Wan2.2_VAE.pth`, W22 `wan/modules/vae2_2.py`): `encoder.downsamples.i.downsamples.j`
  (j = num_res_blocks is the downsample), `decoder.upsamples.i.upsamples.j` (j = num_res_blocks + 1 is the
  upsample), residual blocks as `residual.{0,2,3,6}` / `shortcut`, and `conv1`/`conv2`/`middle`/`head` as in 2.1.

The shortcuts (AvgDown3D / DupUp3D) have no parameters. diffusers' convert script writes `clip_output: False` into
the 2.2 VAE config, which diffusers 0.42 does not read (its decode always clamps); kinema's `decode` clamps to
[-1, 1] as the original release's `Wan2_2_VAE.decode` does, and `decode_raw` does not. Everything here raises
ValueError with the reason.
"""

from __future__ import annotations

import re

from kinema.convert import rename_keys
from kinema.convert.wan_vae_names import MIDDLE as _MIDDLE, RESIDUAL as _RESIDUAL, TOP as _TOP
from kinema.vae.model import VAEConfig

# Wan 2.2's per-channel latent statistics (W22 wan/modules/vae2_2.py `Wan2_2_VAE`; diffusers' convert script).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


def wan22_vae_config(z_dim: int = 48, base_dim: int = 160, decoder_base_dim: int = 256,
                     dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2, temporal_downsample=(False, True, True),
                     latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD) -> VAEConfig:
    """kinema's `VAEConfig` of a Wan 2.2 VAE (the defaults are the released TI2V-5B VAE's)."""
    return VAEConfig(z_dim=z_dim, base_dim=base_dim, dim_mult=tuple(dim_mult), num_res_blocks=num_res_blocks,
                     temporal_downsample=tuple(temporal_downsample),
                     spatial_downsample=(True,) * len(temporal_downsample), attn_mid=True, patch_size=2, conv="3d",
                     residual=True, residual_pad="zero", residual_last=False, decoder_base_dim=decoder_base_dim,
                     decoder_halves=False, latents_mean=tuple(latents_mean), latents_std=tuple(latents_std))


def is_wan22_diffusers_vae(state) -> bool:
    return any(re.match(r"encoder\.down_blocks\.\d+\.(resnets|downsampler)\.", k) for k in state)


def _res_blocks(state, pattern: str) -> int:
    """1 + the largest residual-block index j matching `pattern` (a regex with one group for j)."""
    js = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    if not js:
        raise ValueError("not a Wan 2.2 VAE: no residual blocks in its first stage")
    return 1 + max(js)


def convert_diffusers_vae22(state: dict) -> dict:
    """diffusers `AutoencoderKLWan(is_residual=True)` key names -> kinema `VideoVAE` names."""
    per_stage = _res_blocks(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.") + 1  # blocks + the downsample
    out = {}
    for key, value in state.items():
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            key = f"encoder.down_blocks.{int(m.group(1)) * per_stage + int(m.group(2))}.{m.group(3)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsampler\.(.*)$", key):
            key = f"encoder.down_blocks.{int(m.group(1)) * per_stage + per_stage - 1}.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsampler\.(.*)$", key):
            key = f"decoder.up_blocks.{m.group(1)}.upsamplers.0.{m.group(2)}"
        elif re.match(r"encoder\.down_blocks\.\d+\.", key):
            raise ValueError(f"unexpected key {key!r} in a Wan 2.2 VAE")
        out[key] = value
    return out


# ---- the original release ------------------------------------------------------------------------------------------



def is_wan22_original_vae(state) -> bool:
    return any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in state)


def _part(rest: str) -> str:
    return next((new + rest[len(old):] for old, new in _RESIDUAL.items() if rest.startswith(old)), rest)


def _original_key(key: str, enc_per_stage: int, dec_blocks: int) -> str | None:
    """One original Wan 2.2 VAE key -> kinema's name (None if it is not one)."""
    if m := re.match(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(.*)$", key):
        return f"encoder.down_blocks.{int(m.group(1)) * enc_per_stage + int(m.group(2))}.{_part(m.group(3))}"
    if m := re.match(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.*)$", key):
        j = int(m.group(2))
        inner = f"resnets.{j}" if j < dec_blocks else "upsamplers.0"
        return f"decoder.up_blocks.{m.group(1)}.{inner}.{_part(m.group(3))}"
    if m := re.match(r"(encoder|decoder)\.middle\.([012])\.(.*)$", key):
        return f"{m.group(1)}.mid_block.{_MIDDLE[m.group(2)]}.{_part(m.group(3))}"
    return next((new + key[len(old):] for old, new in _TOP.items() if key.startswith(old)), None)


def convert_original_vae22(state: dict) -> dict:
    """The original release's `Wan2.2_VAE.pth` state dict -> kinema `VideoVAE` key names."""
    res = _res_blocks(state, r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.")
    return rename_keys(state, lambda key: _original_key(key, res + 1, res + 1), "Wan 2.2 VAE")


def vae22_config_from_state(state: dict, latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD) -> VAEConfig:
    """The `VAEConfig` of a kinema-named Wan 2.2 VAE state dict (the .pth holds no config): widths from the first
    encoder and decoder convs and each stage's last residual block, time downsampling from the time convs."""
    need = ("encoder.conv_in.weight", "decoder.conv_in.weight", "post_quant_conv.weight", "decoder.conv_out.weight")
    if any(k not in state for k in need):
        raise ValueError(f"not a Wan 2.2 VAE: missing keys {[k for k in need if k not in state]}")
    ups = sorted({int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))})
    res = _res_blocks(state, r"decoder\.up_blocks\.0\.resnets\.(\d+)\.") - 1
    base = int(state["encoder.conv_in.weight"].shape[0])
    per_stage, stages = res + 1, len(ups)
    widths = [int(state[f"encoder.down_blocks.{i * per_stage + res - 1}.conv2.weight"].shape[0])
              for i in range(stages)]
    temporal = [f"encoder.down_blocks.{i * per_stage + res}.time_conv.weight" in state for i in range(stages - 1)]
    dec_last = int(state["decoder.conv_out.weight"].shape[1])      # decoder_base_dim * dim_mult[0]
    z_dim = int(state["post_quant_conv.weight"].shape[0])
    if any(w % base for w in widths) or dec_last * base % widths[0]:
        raise ValueError(f"unsupported Wan 2.2 VAE stage widths {widths} (base_dim {base})")
    dec_base = dec_last * base // widths[0]
    if z_dim != len(latents_mean):
        raise ValueError(f"z_dim {z_dim} but {len(latents_mean)} latent statistics (Wan 2.2's VAE has 48)")
    return wan22_vae_config(z_dim=z_dim, base_dim=base, decoder_base_dim=dec_base,
                            dim_mult=tuple(w // base for w in widths), num_res_blocks=res,
                            temporal_downsample=tuple(temporal), latents_mean=latents_mean, latents_std=latents_std)
