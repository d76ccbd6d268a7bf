"""diffusers' Wan checkpoints -> kinema.

DiT: diffusers' key names -> kinema's (the original Wan release names, which kinema's DiT uses as they are).
VAE: diffusers' `AutoencoderKLWan` -> kinema's `VideoVAE`. For the Wan 2.1 layout kinema's parameter names are
diffusers' own, so the key map is the identity and the converter checks that the checkpoint is one kinema can run;
the Wan 2.2 layout (is_residual) nests its stages differently (`kinema.convert.wan22`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kinema.convert import first_rule
from kinema.convert.wan22 import convert_diffusers_vae22, is_wan22_diffusers_vae, wan22_vae_config
from kinema.vae.model import VAEConfig, VideoVAE

# (pattern, replacement) applied in order to each diffusers transformer key
_DIFFUSERS_DIT_RULES = [
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),  # diffusers' norm2 is the cross-attention norm
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    # Wan2.1 I2V / FLF2V: the CLIP token projector and each block's image key/value projections
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^condition_embedder\.image_embedder\.pos_embed$", "img_emb.emb_pos"),
    (r"^blocks\.(\d+)\.attn2\.add_k_proj\.", r"blocks.\1.cross_attn.k_img."),
    (r"^blocks\.(\d+)\.attn2\.add_v_proj\.", r"blocks.\1.cross_attn.v_img."),
    (r"^blocks\.(\d+)\.attn2\.norm_added_k\.", r"blocks.\1.cross_attn.norm_k_img."),
]
# Keys diffusers itself drops on load (`_keys_to_ignore_on_load_unexpected`): an unused image query norm.
_IGNORED_DIT_KEY = re.compile(r"^blocks\.\d+\.attn2\.norm_added_q\.")


def diffusers_dit_key(key: str) -> str:
    return first_rule(key, _DIFFUSERS_DIT_RULES) or key


def convert_diffusers_dit(state: dict) -> dict:
    """A diffusers WanTransformer3DModel state dict with kinema/original-Wan key names (without the keys diffusers
    ignores on load)."""
    return {diffusers_dit_key(k): v for k, v in state.items() if not _IGNORED_DIT_KEY.match(k)}


# ---- VAE ------------------------------------------------------------------------------------------------------------

# Wan 2.1's per-channel latent statistics (diffusers' AutoencoderKLWan defaults; W21 wan/modules/vae.py).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# Attention inside the encoder's down blocks (diffusers' attn_scales); kinema has attention in the mid blocks only.
_DOWN_ATTN_KEY = re.compile(r"^encoder\.down_blocks\.\d+\.(to_qkv|proj|norm)\.")


def convert_diffusers_vae(state: dict) -> dict:
    """A diffusers `AutoencoderKLWan` state dict with kinema `VideoVAE` key names (Wan 2.2 layout: see
    `kinema.convert.wan22`).

    kinema's VAE uses diffusers' names as they are (`encoder.conv_in`, `encoder.down_blocks.i.{norm1.gamma, conv1,
    norm2.gamma, conv2, conv_shortcut, resample.1, time_conv}`, `{encoder,decoder}.mid_block.{resnets.0,
    attentions.0.{norm.gamma, to_qkv, proj}, resnets.1}`, `decoder.up_blocks.i.{resnets.j, upsamplers.0}`,
    `{encoder,decoder}.norm_out.gamma`, `conv_out`, `quant_conv`, `post_quant_conv`), with the same tensor shapes
    (RMS-norm gammas (C,1,1,1), and (C,1,1) in the attention). So the map is the identity; what this adds is a clear
    error for checkpoints kinema cannot represent (encoder attention from attn_scales).
    """
    if is_wan22_diffusers_vae(state):
        return convert_diffusers_vae22(state)
    out = {}
    for key, value in state.items():
        if _DOWN_ATTN_KEY.match(key):
            raise ValueError(f"{key!r} is an encoder attention block (non-empty attn_scales), which kinema does not "
                             "support; kinema's VAE has attention in the mid blocks only")
        out[key] = value
    return out


def vae_config_from_diffusers(config: dict) -> VAEConfig:
    """kinema's `VAEConfig` for a diffusers `AutoencoderKLWan` config.json (Wan 2.1 or, with is_residual, 2.2).

    Full 3D convs, mid-block attention, every stage halving H and W (as diffusers always does), and diffusers'
    (misspelt) `temperal_downsample` as kinema's `temporal_downsample`; `patch_size` p takes 3 p^2 channels in and out.
    Raises ValueError for what kinema does not support (non-empty attn_scales, residual stages without patchify
    or with a decoder that halves channels) and for configs diffusers itself would build inconsistently. diffusers'
    defaults (Wan 2.1's, latent statistics included) fill missing fields. `dropout` and `scale_factor_*` are ignored
    (inference only; kinema derives the compression from the stages).
    """
    defaults = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                "temperal_downsample": [False, True, True], "is_residual": False, "in_channels": 3,
                "out_channels": 3, "patch_size": None, "decoder_base_dim": None,
                "latents_mean": WAN21_LATENTS_MEAN, "latents_std": WAN21_LATENTS_STD}
    c = {**defaults, **config}
    patch = int(c["patch_size"] or 1)
    if c["in_channels"] != 3 * patch**2 or c["out_channels"] != 3 * patch**2:
        raise ValueError(f"in/out_channels {c['in_channels']}/{c['out_channels']} are not supported (RGB "
                         f"patchified {patch}x{patch}: {3 * patch**2})")
    if c["attn_scales"]:
        raise ValueError(f"attn_scales={c['attn_scales']} (encoder attention) is not supported; kinema's VAE has "
                         "attention in the mid blocks only")
    dim_mult, temporal = tuple(int(m) for m in c["dim_mult"]), tuple(bool(t) for t in c["temperal_downsample"])
    if len(temporal) != len(dim_mult) - 1:
        # diffusers indexes the encoder's list forwards and the decoder's reversed list forwards, so any other
        # length makes its encoder and decoder disagree
        raise ValueError(f"temperal_downsample needs len(dim_mult) - 1 = {len(dim_mult) - 1} entries, got {temporal}")
    z_dim = int(c["z_dim"])
    stats = {}
    for name in ("latents_mean", "latents_std"):
        values = tuple(float(v) for v in c[name])
        if len(values) != z_dim:
            raise ValueError(f"{name} has {len(values)} values but z_dim is {z_dim}")
        stats[name] = values
    decoder_base = int(c["decoder_base_dim"] or c["base_dim"])
    if c["is_residual"]:
        if patch != 2:
            raise ValueError(f"is_residual=True needs patch_size 2 (the Wan 2.2 VAE), got {c['patch_size']}")
        return wan22_vae_config(z_dim=z_dim, base_dim=int(c["base_dim"]), decoder_base_dim=decoder_base,
                                dim_mult=dim_mult, num_res_blocks=int(c["num_res_blocks"]),
                                temporal_downsample=temporal, **stats)
    return VAEConfig(z_dim=z_dim, base_dim=int(c["base_dim"]), dim_mult=dim_mult,
                     num_res_blocks=int(c["num_res_blocks"]), temporal_downsample=temporal,
                     spatial_downsample=(True,) * len(temporal), attn_mid=True, patch_size=patch, conv="3d",
                     decoder_base_dim=0 if decoder_base == int(c["base_dim"]) else decoder_base, **stats)


def load_diffusers_vae(directory: str | Path) -> VideoVAE:
    """kinema `VideoVAE` (eval mode) from a diffusers `AutoencoderKLWan` folder, as written by `save_pretrained`
    (config.json and diffusion_pytorch_model*.safetensors)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = vae_config_from_diffusers(json.loads((directory / "config.json").read_text()))
    files = sorted(directory.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no diffusion_pytorch_model*.safetensors in {directory}")
    state = {}
    for f in files:
        state.update(load_file(f))
    vae = VideoVAE(config)
    vae.load_state_dict(convert_diffusers_vae(state), strict=True)
    return vae.eval()
