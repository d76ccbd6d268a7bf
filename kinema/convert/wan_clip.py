"""The original Wan 2.1 release's CLIP (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`) -> transformers'
`CLIPVisionModel`.

The file holds a whole XLM-RoBERTa CLIP (W21 `wan/modules/clip.py`); Wan2.1 I2V/FLF2V use only its vision tower, a
ViT-H/14 (1280 wide, 16 heads, 32 layers, 224 px, exact GELU, pre-norm, no patch bias), and take the tokens after
its 31st block (`use_31_block`), which is transformers' `hidden_states[-2]`. The names:

    visual.patch_embedding              -> embeddings.patch_embedding
    visual.cls_embedding (1, 1, C)      -> embeddings.class_embedding (C,)
    visual.pos_embedding (1, N, C)      -> embeddings.position_embedding.weight (N, C)
    visual.pre_norm / post_norm         -> pre_layrnorm / post_layernorm
    visual.transformer.N.norm1 / norm2  -> encoder.layers.N.layer_norm1 / layer_norm2
    visual.transformer.N.attn.to_qkv    -> encoder.layers.N.self_attn.{q,k,v}_proj (split in three, q first)
    visual.transformer.N.attn.proj      -> encoder.layers.N.self_attn.out_proj
    visual.transformer.N.mlp.0 / mlp.2  -> encoder.layers.N.mlp.fc1 / fc2

The text tower (`textual.*`), the contrastive `log_scale` and the vision head `visual.head` are not needed and are
dropped. The head count is not in the shapes: it is the width / 80 (ViT-H's head dim), as the release hard-codes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from kinema.convert import first_rule, rename_keys, state_dict_mismatch

CLIP_HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads
_DROPPED = re.compile(r"^(textual\.|log_scale$|visual\.head(\.|$))")
_RULES = [
    (r"^visual\.patch_embedding\.", "embeddings.patch_embedding."),
    (r"^visual\.pre_norm\.", "pre_layrnorm."),
    (r"^visual\.post_norm\.", "post_layernorm."),
    (r"^visual\.transformer\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^visual\.transformer\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^visual\.transformer\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^visual\.transformer\.(\d+)\.mlp\.0\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^visual\.transformer\.(\d+)\.mlp\.2\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^visual\.transformer\.(\d+)\.attn\.to_qkv\.", r"encoder.layers.\1.self_attn.qkv."),  # split below
    (r"^visual\.cls_embedding$", "embeddings.class_embedding"),
    (r"^visual\.pos_embedding$", "embeddings.position_embedding.weight"),
]


def convert_original_clip(state: dict) -> dict:
    """Wan's XLM-RoBERTa CLIP state dict -> `CLIPVisionModel` names (without the `vision_model.` prefix); ValueError
    naming keys it does not know."""
    out = rename_keys({k: v for k, v in state.items() if not _DROPPED.match(k)}, lambda k: first_rule(k, _RULES), "Wan CLIP checkpoint")
    for key in [k for k in out if ".self_attn.qkv." in k]:
        for name, part in zip("qkv", out.pop(key).chunk(3, dim=0)):
            out[key.replace(".qkv.", f".{name}_proj.")] = part
    if "embeddings.class_embedding" in out:
        out["embeddings.class_embedding"] = out["embeddings.class_embedding"].reshape(-1)
    if "embeddings.position_embedding.weight" in out:
        out["embeddings.position_embedding.weight"] = out["embeddings.position_embedding.weight"].flatten(0, -2)
    return out


def clip_config_from_original(state: dict) -> dict:
    """`CLIPVisionConfig` fields read off a Wan CLIP state dict's vision tower (ViT-H/14: 1280 wide, 32 layers)."""
    need = ["visual.patch_embedding.weight", "visual.pos_embedding", "visual.transformer.0.mlp.0.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not a Wan CLIP checkpoint: missing keys {missing}")
    width, _, patch, _ = state["visual.patch_embedding.weight"].shape
    if width % CLIP_HEAD_DIM:
        raise ValueError(f"vision width {width} is not a multiple of ViT-H's head dim {CLIP_HEAD_DIM}")
    grid = round((state["visual.pos_embedding"].shape[-2] - 1) ** 0.5)
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"visual\.transformer\.(\d+)\.", k)))
    return dict(hidden_size=int(width), intermediate_size=int(state["visual.transformer.0.mlp.0.weight"].shape[0]),
                num_hidden_layers=layers, num_attention_heads=int(width) // CLIP_HEAD_DIM, patch_size=int(patch),
                image_size=grid * int(patch), hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3)


def build_clip_vision(state: dict, dtype: torch.dtype = torch.float32):
    """A `CLIPVisionModel` holding the vision tower of a Wan CLIP state dict (strict: every key and shape must fit)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**clip_config_from_original(state))
    converted = {k: v.to(dtype) for k, v in convert_original_clip(state).items()}
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    own = model.state_dict()
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in own) else ""
    converted = {prefix + k: v for k, v in converted.items()}
    problem = state_dict_mismatch(own, converted)
    if problem:
        raise ValueError(f"does not fit CLIP ViT: {problem}")
    model.load_state_dict(converted, assign=True)
    positions = converted[prefix + "embeddings.position_embedding.weight"].shape[0]
    model.get_submodule(prefix + "embeddings").register_buffer(  # not in the state dict, so still on meta
        "position_ids", torch.arange(positions).expand((1, -1)), persistent=False)
    return model.eval().requires_grad_(False)


def load_original_clip(path: str | Path, dtype: torch.dtype = torch.float32):
    """`CLIPVisionModel` from Wan's `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`."""
    from kinema.convert.torch_files import build_from_pth

    return build_from_pth(path, build_clip_vision, dtype)
