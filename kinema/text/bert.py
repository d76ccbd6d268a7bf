"""A small BERT encoder (all-MiniLM-L6-v2 and its kin) in plain torch, without transformers.

Importing transformers and building its BertModel costs seconds on a small CPU; the default model's text encoder
is a 22M-parameter BERT, so kinema runs it here: the weights are read straight from the model folder
(`model.safetensors`, else `pytorch_model.bin`), the tokens from its `tokenizer.json` with the `tokenizers`
library. The per-token states equal transformers' `BertModel(...).last_hidden_state` on the real tokens
(`tests/text/test_bert.py`).

    tokenizer = WordPieceTokenizer(folder / "tokenizer.json", max_length=32)
    model = load_bert(folder)
    ids, mask = tokenizer(["a red circle"])          # (B, max_length) each
    states = model(ids, mask)                        # (B, max_length, D)
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        """The fields kinema uses from a transformers `config.json`; refuses what this encoder does not do."""
        d = json.loads(Path(path).read_text())
        if d.get("model_type") != "bert":
            raise ValueError(f"{path}: model_type {d.get('model_type')!r} is not bert")
        cfg = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        if cfg.hidden_act != "gelu" or cfg.position_embedding_type != "absolute":
            raise ValueError(f"{path}: only gelu activations and absolute positions are supported")
        return cfg


class Embeddings(nn.Module):
    """Token ids -> LayerNorm(word + position + token type), token type 0 everywhere (single sentences).

    The tables are plain parameters, left uninitialised: they always come from a checkpoint (and nn.Embedding's
    random init on the meta device would import torch._dynamo, a second on a small CPU)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.word = nn.Parameter(torch.empty(cfg.vocab_size, d))  # (V, D)
        self.position = nn.Parameter(torch.empty(cfg.max_position_embeddings, d))  # (P, D)
        self.token_type = nn.Parameter(torch.empty(cfg.type_vocab_size, d))  # (T, D)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        n = ids.shape[1]
        x = F.embedding(ids, self.word) + self.token_type[0] + self.position[:n]
        return self.norm(x)


class Layer(nn.Module):
    """Post-LayerNorm transformer block: x = LN(x + attn(x)); x = LN(x + FFN(x)), FFN = W2 GELU(W1 x)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.heads = cfg.num_attention_heads
        self.q, self.k, self.v, self.attn_out = (nn.Linear(d, d) for _ in range(4))
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ffn_in = nn.Linear(d, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D/H)
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def attention(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), keep (B, 1, 1, L) bool (True: a real token, attended to) -> (B, L, D)."""
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, L, D/H), scale 1/sqrt(D/H)
        return self.attn_out(o.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        x = self.attn_norm(x + self.attention(x, keep))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """(B, L) token ids and (B, L) attention mask (1: real token, 0: padding) -> (B, L, D) last hidden states.

    Rows at padded positions are computed but meaningless (callers trim them)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): every query sees the real tokens only
        x = self.embed(input_ids)  # (B, L, D)
        for layer in self.layers:
            x = layer(x, keep)
        return x


# checkpoint (transformers BertModel) name -> this module's name; the pooler and position_ids are not used
_RENAMES = [
    (r"^embeddings\.word_embeddings\.weight$", "embed.word"),
    (r"^embeddings\.position_embeddings\.weight$", "embed.position"),
    (r"^embeddings\.token_type_embeddings\.weight$", "embed.token_type"),
    (r"^embeddings\.LayerNorm\.", "embed.norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
     lambda m: f"layers.{m[1]}.{m[2][0]}."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]
_UNUSED = re.compile(r"^(pooler\.|embeddings\.position_ids$)")


def rename_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers BERT state dict (with or without the `bert.` prefix) in this module's names."""
    out = {}
    for name, t in sd.items():
        name = name.removeprefix("bert.")
        if _UNUSED.match(name):
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, name)
            if n:
                out[new] = t
                break
        else:
            raise KeyError(f"unexpected weight {name!r} in a BERT checkpoint")
    return out


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint in `folder`: model.safetensors if present, else pytorch_model.bin (tensors only)."""
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def load_bert(folder: Path, dtype: torch.dtype = torch.float32) -> BertEncoder:
    """The frozen encoder in a transformers BERT folder (config.json + weights), in eval mode."""
    folder = Path(folder)
    cfg = BertConfig.from_json(folder / "config.json")
    with torch.device("meta"):  # no random init: every parameter comes from the checkpoint
        model = BertEncoder(cfg)
    model.load_state_dict(rename_state_dict(read_weights(folder)), strict=True, assign=True)
    log.debug("loaded BERT (%d layers, width %d) from %s", cfg.num_hidden_layers, cfg.hidden_size, folder)
    return model.to(dtype).eval().requires_grad_(False)


class WordPieceTokenizer:
    """Prompts -> ([CLS] ... [SEP] ids, attention mask), each (B, max_length) int64, from a `tokenizer.json`.

    Truncates to max_length tokens (special tokens included) and pads with the pad id on the right, as
    transformers' tokenizer does with padding="max_length", truncation=True."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_length)  # the file's own settings (128) are replaced
        pad = self._tok.padding or {}
        self._tok.enable_padding(length=max_length, pad_id=pad.get("pad_id", 0),
                                 pad_token=pad.get("pad_token", "[PAD]"))

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self._tok.encode_batch(prompts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # (B, max_length)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)  # (B, max_length)
        return ids, mask
