"""Wan checkpoints' configs and the original release's VAE key names -> kinema.

- DiT configs from diffusers' `WanTransformer3DModel` config.json, from the original `WanModel` config.json, or read
  off the weights (single-file checkpoints). The DiT's own key names are the original ones (`kinema.dit.model`).
- The original `Wan2.1_VAE.pth` (W21 `wan/modules/vae.py` names: `encoder.downsamples.i.residual.{0,2,3,6}`,
  `middle.{0,1,2}`, `head.{0,2}`, `conv1/conv2`, a flat `decoder.upsamples` list) -> kinema's VAE names (diffusers'
  own), for any stage layout, and the `VAEConfig` read off the shapes (the .pth holds no config).
Everything here raises ValueError with the reason; callers add the file name.
"""

from __future__ import annotations

import math
import re

from kinema.convert import rename_keys
from kinema.convert.wan_vae_names import MIDDLE as _MIDDLE, RESIDUAL as _RESIDUAL, TOP as _TOP
from kinema.convert.wan import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
from kinema.dit.model import DiTConfig
from kinema.vae.model import VAEConfig

COMFY_PREFIX = "model.diffusion_model."   # ComfyUI's repackaged DiT files prefix every key with this
WAN_HEAD_DIM = 128                        # every released Wan model
CLIP_DIM = 1280                           # Wan2.1 I2V/FLF2V: width of the CLIP ViT-H/14 tokens (MLPProj(1280, dim))
FLF2V_IMAGE_TOKENS = 514                  # FLF2V: 2 images x 257 tokens, the length of its position table

# ---- DiT configs ----------------------------------------------------------------------------------------------------


def _diffusers_image_fields(c: dict, dim: int) -> dict:
    """DiTConfig's image fields from diffusers' `image_dim` / `added_kv_proj_dim` / `pos_embed_seq_len`: Wan2.1
    I2V/FLF2V project the CLIP tokens to the hidden size first, so the image keys/values take `dim` wide tokens."""
    image_dim, kv_dim, pos = (c.get(k) for k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"))
    if image_dim is None:
        if kv_dim is not None or pos is not None:
            raise ValueError(f"added_kv_proj_dim={kv_dim} / pos_embed_seq_len={pos} without image_dim: not a Wan "
                             "transformer kinema knows")
        return {}
    if kv_dim != dim:
        raise ValueError(f"added_kv_proj_dim={kv_dim}: kinema's image cross-attention takes the projected image "
                         f"tokens (added_kv_proj_dim = the hidden size {dim}, as every Wan2.1 I2V/FLF2V model has)")
    return {"image_dim": int(image_dim), "image_pos_len": None if pos is None else int(pos)}


def dit_config_from_diffusers(c: dict) -> DiTConfig:
    """A diffusers `WanTransformer3DModel` config.json -> `DiTConfig` (T2V, TI2V, and Wan2.1 I2V/FLF2V with their
    image branch)."""
    if c.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise ValueError(f"transformer class {c['_class_name']!r} is not supported (WanTransformer3DModel only)")
    heads, head_dim = int(c.get("num_attention_heads", 40)), int(c.get("attention_head_dim", 128))
    in_ch = int(c.get("in_channels", 16))
    return DiTConfig(in_channels=in_ch, out_channels=int(c.get("out_channels") or in_ch), dim=heads * head_dim,
                     num_heads=heads, num_layers=int(c.get("num_layers", 40)), ffn_dim=int(c.get("ffn_dim", 13824)),
                     text_dim=int(c.get("text_dim", 4096)), freq_dim=int(c.get("freq_dim", 256)),
                     patch_size=tuple(int(p) for p in c.get("patch_size", (1, 2, 2))),
                     cross_attn_norm=bool(c.get("cross_attn_norm", True)), eps=float(c.get("eps", 1e-6)),
                     **_diffusers_image_fields(c, heads * head_dim))


def dit_config_from_wan(c: dict) -> DiTConfig:
    """The original release's `WanModel` config.json -> `DiTConfig` (model_type "t2v": Wan 2.1 T2V and each Wan 2.2
    T2V-A14B expert; "ti2v": Wan 2.2 TI2V-5B; "i2v" / "flf2v": Wan 2.1 I2V-14B / FLF2V-14B, whose `img_emb` takes
    1280-wide CLIP tokens, FLF2V with a 514-token position table)."""
    kind = c.get("model_type", "t2v")
    if kind not in ("t2v", "ti2v", "i2v", "flf2v"):
        raise ValueError(f"model_type {kind!r} is not supported ('t2v', 'ti2v', 'i2v' and 'flf2v' only)")
    image = {} if kind in ("t2v", "ti2v") else {
        "image_dim": CLIP_DIM, "image_pos_len": FLF2V_IMAGE_TOKENS if kind == "flf2v" else None}
    missing = [k for k in ("dim", "num_heads", "num_layers", "ffn_dim") if k not in c]
    if missing:
        raise ValueError(f"WanModel config lacks {missing}")
    in_dim = int(c.get("in_dim", 16))
    return DiTConfig(in_channels=in_dim, out_channels=int(c.get("out_dim", in_dim)), dim=int(c["dim"]),
                     num_heads=int(c["num_heads"]), num_layers=int(c["num_layers"]), ffn_dim=int(c["ffn_dim"]),
                     text_dim=int(c.get("text_dim", 4096)), freq_dim=int(c.get("freq_dim", 256)),
                     patch_size=tuple(int(p) for p in c.get("patch_size", (1, 2, 2))),
                     cross_attn_norm=bool(c.get("cross_attn_norm", True)), eps=float(c.get("eps", 1e-6)), **image)


def dit_config_from_state(state: dict, num_heads: int | None = None) -> DiTConfig:
    """`DiTConfig` read off an original-names DiT state dict (tensors or shapes); the head count is not in the
    shapes, so it is `num_heads` or dim / 128 (Wan's head dim)."""
    state = {k: tuple(getattr(v, "shape", v)) for k, v in state.items()}
    need = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "blocks.0.ffn.0.weight",
            "head.head.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not a Wan DiT with original key names: missing keys {missing}")
    dim, in_ch, *patch = state["patch_embedding.weight"]
    image = {}
    if "img_emb.proj.0.weight" in state:  # Wan2.1 I2V / FLF2V
        pos = state.get("img_emb.emb_pos")
        image = {"image_dim": int(state["img_emb.proj.0.weight"][0]), "image_pos_len": None if pos is None
                 else int(pos[1])}
    if num_heads is None:
        if dim % WAN_HEAD_DIM:
            raise ValueError(f"dim {dim} is not a multiple of Wan's head dim {WAN_HEAD_DIM}; give num_heads in a "
                             "config file next to the checkpoint")
        num_heads = dim // WAN_HEAD_DIM
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return DiTConfig(in_channels=int(in_ch), out_channels=int(state["head.head.weight"][0]) // math.prod(patch),
                     dim=int(dim), num_heads=int(num_heads), num_layers=layers,
                     ffn_dim=int(state["blocks.0.ffn.0.weight"][0]),
                     text_dim=int(state["text_embedding.0.weight"][1]),
                     freq_dim=int(state["time_embedding.0.weight"][1]), patch_size=tuple(int(p) for p in patch),
                     cross_attn_norm="blocks.0.norm3.weight" in state, **image)


def strip_comfy_prefix(keys) -> str:
    """The prefix to strip from a single-file DiT's keys: ComfyUI's when every key has it, else none."""
    keys = list(keys)
    return COMFY_PREFIX if keys and all(k.startswith(COMFY_PREFIX) for k in keys) else ""


# ---- the original Wan 2.1 VAE ---------------------------------------------------------------------------------------

def _block_part(rest: str) -> str:
    """A residual block's / resample's parameter name inside a block, original -> kinema."""
    for old, new in _RESIDUAL.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest  # resample.1.*, time_conv.*, and the attention's norm/to_qkv/proj keep their names


def _decoder_stages(state: dict) -> dict[int, str]:
    """Flat `decoder.upsamples.i` -> `up_blocks.s.resnets.j` / `up_blocks.s.upsamplers.0` (a resample ends a stage)."""
    ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"decoder\.upsamples\.(\d+)\.", k))})
    names, stage, j = {}, 0, 0
    for i in ids:
        if any(k.startswith(f"decoder.upsamples.{i}.resample.") for k in state):
            names[i], stage, j = f"up_blocks.{stage}.upsamplers.0", stage + 1, 0
        else:
            names[i], j = f"up_blocks.{stage}.resnets.{j}", j + 1
    return names


def convert_original_vae(state: dict) -> dict:
    """The original release's Wan 2.1 VAE state dict -> kinema `VideoVAE` (= diffusers) key names."""
    ups = _decoder_stages(state)

    def rename(key: str) -> str | None:
        if m := re.match(r"encoder\.downsamples\.(\d+)\.(.*)$", key):
            return f"encoder.down_blocks.{m.group(1)}.{_block_part(m.group(2))}"
        if m := re.match(r"decoder\.upsamples\.(\d+)\.(.*)$", key):
            return f"decoder.{ups[int(m.group(1))]}.{_block_part(m.group(2))}"
        if m := re.match(r"(encoder|decoder)\.middle\.([012])\.(.*)$", key):
            return f"{m.group(1)}.mid_block.{_MIDDLE[m.group(2)]}.{_block_part(m.group(3))}"
        return next((new + key[len(old):] for old, new in _TOP.items() if key.startswith(old)), None)
    return rename_keys(state, rename, "Wan 2.1 VAE")


def vae_config_from_state(state: dict, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD) -> VAEConfig:
    """`VAEConfig` read off a kinema-named Wan 2.1 VAE state dict: stages are split at the encoder's resamples.
    The latent statistics are Wan 2.1's (the original release hard-codes them in its VAE wrapper)."""
    need = ("encoder.conv_in.weight", "post_quant_conv.weight")
    if any(k not in state for k in need):
        raise ValueError(f"not a Wan 2.1 VAE: missing keys {[k for k in need if k not in state]}")
    ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    stages, temporal, res, out_dim = [], [], 0, None
    for i in ids:
        if f"encoder.down_blocks.{i}.resample.1.weight" in state:
            stages.append((res, out_dim))
            temporal.append(f"encoder.down_blocks.{i}.time_conv.weight" in state)
            res = 0
        else:
            res, out_dim = res + 1, int(state[f"encoder.down_blocks.{i}.conv2.weight"].shape[0])
    stages.append((res, out_dim))
    base = int(state["encoder.conv_in.weight"].shape[0])
    if len({r for r, _ in stages}) != 1 or stages[0][0] == 0 or any(d is None or d % base for _, d in stages):
        raise ValueError(f"unsupported VAE stage layout {stages} (base_dim {base})")
    z_dim = int(state["post_quant_conv.weight"].shape[0])
    if z_dim != len(latents_mean):
        raise ValueError(f"z_dim {z_dim}: only the Wan 2.1 VAE (z_dim 16) is supported")
    return VAEConfig(z_dim=z_dim, base_dim=base, dim_mult=tuple(d // base for _, d in stages),
                     num_res_blocks=stages[0][0], temporal_downsample=tuple(temporal),
                     spatial_downsample=(True,) * len(temporal),
                     attn_mid="encoder.mid_block.attentions.0.to_qkv.weight" in state,
                     latents_mean=tuple(latents_mean), latents_std=tuple(latents_std))
