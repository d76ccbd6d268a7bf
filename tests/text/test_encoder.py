import pytest
import torch


def test_per_token_embeddings_zero_padded(text_encoder):
    emb, mask = text_encoder.encode_with_mask(["a red circle moving left on a black background", ""])
    assert emb.shape == (2, 32, 384) and emb.dtype == torch.float32
    n0, n1 = int(mask[0].sum()), int(mask[1].sum())
    assert n0 == 11 and n1 == 2  # [CLS] + 9 words + [SEP]; the empty prompt is [CLS] [SEP]
    assert emb[0, n0:].abs().max() == 0 and emb[0, :n0].abs().min() > 0
    assert emb[1, n1:].abs().max() == 0


def test_direction_words_differ_per_token(text_encoder):
    left, right = text_encoder(["a red circle moving left on a black background",
                                "a red circle moving right on a black background"])
    cos = torch.nn.functional.cosine_similarity(left[5], right[5], dim=0)  # the direction word
    assert cos < 0.9


def test_cache_and_batch_consistency(text_encoder):
    one = text_encoder(["a blue square growing on a gray background"])
    both = text_encoder(["a green triangle", "a blue square growing on a gray background"])
    torch.testing.assert_close(one[0], both[1])
    text_encoder([""])
    assert "" in text_encoder._cache  # the empty (negative) prompt is computed once


def test_too_long_prompt_is_refused(text_encoder):
    with pytest.raises(ValueError, match="characters"):
        text_encoder(["word " * 1000])


def test_any_local_transformers_encoder_loads_through_the_same_interface(tmp_path):
    """A T5 encoder folder (as Wan's umT5 would be) works like the default encoder."""
    import shutil

    from transformers import T5Config, T5EncoderModel

    from kinema.text.encoder import TextEncoder, TextEncoderConfig, resolve_source

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(cfg).save_pretrained(tmp_path)
    minilm = resolve_source("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, tmp_path / name)
    enc = TextEncoder(TextEncoderConfig(source=str(tmp_path), max_length=16, pad_to=24, dim=16))
    emb, mask = enc.encode_with_mask(["a red circle", "a much longer prompt about a blue square"])
    assert emb.shape == (2, 24, 16) and mask.sum(1).tolist() == [5, 10]
    assert emb[0, 5:].abs().max() == 0
    assert type(enc._model).__name__ == "T5EncoderModel"
    with pytest.raises(FileNotFoundError):
        TextEncoder(TextEncoderConfig(source=str(tmp_path / "nope")))(["x"])
