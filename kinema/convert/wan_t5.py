"""The original Wan release's umT5 encoder (`models_t5_umt5-xxl-enc-bf16.pth`) -> transformers' `UMT5EncoderModel`.

Wan's `T5Encoder` (W21 `wan/modules/t5.py`) is the umT5 encoder with its own parameter names:

    token_embedding                     -> shared (= encoder.embed_tokens)
    blocks.N.norm1 / attn.{q,k,v,o}     -> encoder.block.N.layer.0.{layer_norm, SelfAttention.{q,k,v,o}}
    blocks.N.pos_embedding.embedding    -> encoder.block.N.layer.0.SelfAttention.relative_attention_bias (per layer)
    blocks.N.norm2                      -> encoder.block.N.layer.1.layer_norm
    blocks.N.ffn.gate.0 / fc1 / fc2     -> encoder.block.N.layer.1.DenseReluDense.wi_0 / wi_1 / wo (gated tanh-GELU)
    norm                                -> encoder.final_layer_norm

The computation is the same (no attention scaling, bidirectional buckets with max distance 128, RMS norms with eps
1e-6), so the converted weights give the same states. The config is read off the tensor shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kinema.convert import first_rule, rename_keys, state_dict_mismatch

_RULES = [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
]


def convert_original_t5(state: dict) -> dict:
    """Wan T5Encoder state dict -> UMT5EncoderModel state dict; ValueError naming keys it does not know."""
    out = rename_keys(state, lambda k: first_rule(k, _RULES), "Wan umT5 encoder")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def umt5_config_from_original(state: dict) -> dict:
    """UMT5Config fields read off a Wan T5Encoder state dict's shapes (umt5-xxl: 4096-d, 24 layers, 64 heads)."""
    need = ["token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight",
            "blocks.0.pos_embedding.embedding.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not a Wan umT5 encoder: missing keys {missing}")
    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    d_attn = int(state["blocks.0.attn.q.weight"].shape[0])
    return dict(vocab_size=int(vocab), d_model=int(d_model), d_kv=d_attn // int(heads),
                d_ff=int(state["blocks.0.ffn.fc1.weight"].shape[0]), num_layers=layers, num_decoder_layers=layers,
                num_heads=int(heads), relative_attention_num_buckets=int(buckets),
                relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
                dropout_rate=0.0, tie_word_embeddings=False)


def build_umt5(state: dict, dtype: torch.dtype = torch.float32):
    """A `UMT5EncoderModel` holding a Wan T5Encoder state dict (strict: every key and shape must fit)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**umt5_config_from_original(state))
    converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in convert_original_t5(state).items()}
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    problem = state_dict_mismatch(model.state_dict(), converted)
    if problem:
        raise ValueError(f"does not fit umT5: {problem}")
    model.load_state_dict(converted, assign=True)
    model.encoder.embed_tokens = model.shared
    return model


def load_original_umt5(path: str | Path, dtype: torch.dtype = torch.float32):
    """`UMT5EncoderModel` from Wan's `models_t5_umt5-xxl-enc-bf16.pth` (read with `kinema.convert.torch_files`)."""
    from kinema.convert.torch_files import build_from_pth

    return build_from_pth(path, build_umt5, dtype)
