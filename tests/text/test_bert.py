"""The default MiniLM's own BERT (kinema.text.bert) against transformers on the same weights and tokenizer."""

import shutil
import subprocess
import sys

import pytest
import torch

from kinema.text.bert import WordPieceTokenizer, load_bert, read_weights
from kinema.text.encoder import TextEncoder, TextEncoderConfig, resolve_source

PROMPTS = [
    "a red circle moving right on a black background",
    "",
    "A BLUE Square, growing!  on a gray background...",
    "café naïve Ünïcode — “quotes” 東京 emoji 🙂 tabs\tand\nnewlines",
    "x",
    # longer than 32 tokens: truncated to [CLS] + 30 + [SEP]
    "a small green triangle bouncing off the walls of a white room while a large yellow star spins slowly "
    "in the corner and a purple square fades in and out over a dark blue background with stripes",
]


@pytest.fixture(scope="module")
def minilm():
    return resolve_source("minilm")


@pytest.fixture(scope="module")
def reference(minilm):
    """The same folder through transformers (a path source is never the fast path)."""
    enc = TextEncoder(TextEncoderConfig(source=str(minilm)))
    assert enc.uses_transformers
    return enc


@pytest.mark.parametrize("max_length", [32, 8, 64])
def test_token_ids_equal_transformers(minilm, max_length):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    want = ref(PROMPTS, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids, mask = WordPieceTokenizer(minilm / "tokenizer.json", max_length)(PROMPTS)
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    assert ids[0, 0] == 101 and ids.shape == (len(PROMPTS), max_length)
    assert mask[-1].all() == (max_length <= 32)  # the long prompt fills every row


def test_states_equal_transformers_bert_model(minilm, reference):
    """Raw per-token states on a padded batch, real tokens only: max abs difference <= 1e-5."""
    reference._ensure_loaded()
    ids, mask = WordPieceTokenizer(minilm / "tokenizer.json", 32)(PROMPTS)
    with torch.no_grad():
        want = reference._model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = load_bert(minilm)(ids, mask)
    real = mask.bool()
    assert got.shape == want.shape == (len(PROMPTS), 32, 384)
    assert (got[real] - want[real]).abs().max() <= 1e-5


def test_text_encoder_default_equals_transformers_path(text_encoder, reference):
    assert not text_encoder.uses_transformers
    got, got_mask = text_encoder.encode_with_mask(PROMPTS)
    want, want_mask = reference.encode_with_mask(PROMPTS)
    assert torch.equal(got_mask, want_mask) and got_mask[-1].all()
    assert (got - want).abs().max() <= 1e-5
    assert got[~got_mask].abs().max() == 0  # zero past each prompt's length, as before


def test_bin_checkpoint_loads_like_safetensors(minilm, tmp_path):
    shutil.copy(minilm / "config.json", tmp_path / "config.json")
    torch.save(read_weights(minilm), tmp_path / "pytorch_model.bin")
    ids, mask = WordPieceTokenizer(minilm / "tokenizer.json", 16)(PROMPTS[:3])
    with torch.no_grad():
        torch.testing.assert_close(load_bert(tmp_path)(ids, mask), load_bert(minilm)(ids, mask), rtol=0, atol=0)


def test_default_encoder_never_imports_transformers():
    code = ("import sys; from kinema.text.encoder import TextEncoder, TextEncoderConfig; "
            "e = TextEncoder(TextEncoderConfig()); assert e(['a red circle']).shape == (1, 32, 384); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
