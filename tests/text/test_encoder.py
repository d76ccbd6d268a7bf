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
