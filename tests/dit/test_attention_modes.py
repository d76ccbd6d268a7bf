"""The three self-attention modes of the one DiT, and the causal mode's KV cache."""

from dataclasses import replace

import pytest
import torch

from kinema.dit.cache import KVCache
from kinema.dit.model import DiT, TokenGrid
from kinema.dit.rope import rope_table
from kinema.train.dit import DIT_PRESETS


def dit_in(mode: str, seed: int = 0, **extra) -> DiT:
    torch.manual_seed(seed)
    dit = DiT(replace(DIT_PRESETS["tiny"], attention=mode, **extra)).eval()
    for p in dit.parameters():  # random everywhere (Wan's init zeroes the output layer)
        p.data.normal_(0, 0.1)
    return dit


def inputs(frames: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, frames, 4, 4, generator=g), torch.tensor([300.0, 800.0]),
            torch.randn(2, 5, 384, generator=g))


@pytest.mark.parametrize("mode", ["full", "factorised", "causal"])
def test_a_later_frame_reaches_earlier_frames_only_without_the_causal_mask(mode):
    dit = dit_in(mode, temporal_conv=mode == "factorised")
    x, t, text = inputs()
    y = x.clone()
    y[:, :, 2] += 1.0  # change latent frame 2 only
    delta = (dit(x, t, text) - dit(y, t, text)).abs().amax(dim=(0, 1, 3, 4))  # per frame
    assert delta[2:].min() > 1e-3
    if mode == "causal":
        assert delta[:2].max() == 0.0
    else:
        assert delta[:2].min() > 1e-3


def test_factorised_attention_is_per_frame_then_per_position():
    dit = dit_in("factorised")
    block, (f, h, w) = dit.blocks[0], (3, 2, 2)
    hidden = torch.randn(2, f * h * w, 24)
    tokens = TokenGrid((f, h, w), rope_table((f, h, w), dit.config.head_dim, "cpu"))
    spatial = block.self_attention(hidden, tokens)
    for i in range(f):  # each frame on its own, with its own positions
        part = slice(i * h * w, (i + 1) * h * w)
        rope = tokens.rope[part]
        torch.testing.assert_close(spatial[:, part], block.self_attn(hidden[:, part], hidden[:, part], rope))
    temporal = block.temporal_attention(hidden, tokens)
    for p in range(h * w):  # each position's line through time
        line = hidden[:, p::h * w]
        rope = tokens.rope[p::h * w]
        torch.testing.assert_close(temporal[:, p::h * w], block.temporal_attn(line, line, rope))


def test_modes_keep_wan_names_and_factorised_adds_only_temporal_modules():
    full, causal = dit_in("full").state_dict(), dit_in("causal").state_dict()
    factorised = dit_in("factorised", temporal_conv=True).state_dict()
    assert full.keys() == causal.keys()
    extra = set(factorised) - set(full)
    assert extra and all(".temporal_attn." in k or ".temporal_conv." in k for k in extra)
    with pytest.raises(ValueError, match="attention must be one of"):
        replace(DIT_PRESETS["tiny"], attention="sparse")
    with pytest.raises(ValueError, match="temporal_conv"):
        replace(DIT_PRESETS["tiny"], attention="full", temporal_conv=True)


def test_rope_offset_tables_are_rows_of_the_longer_table():
    whole = rope_table((7, 2, 3), 24, "cpu")
    part = rope_table((3, 2, 3), 24, "cpu", frame_offset=4)
    torch.testing.assert_close(whole[4 * 6:], part)


def test_chunks_through_the_kv_cache_equal_the_whole_pass():
    dit = dit_in("causal")
    x, _, text = inputs(frames=5)
    t = torch.rand(2, 5 * 4) * 1000  # per-token times, as a video with given frames has
    whole = dit(x, t, text)
    cache, outs = KVCache(dit.config.num_layers, tokens_per_frame=4, past="joint"), []
    for part in (slice(0, 1), slice(1, 3), slice(3, 5)):
        cache.start_chunk()
        outs.append(dit(x[:, :, part], t[:, part.start * 4:part.stop * 4], text, kv=cache.next_slot()))
        cache.end_chunk(part.stop - part.start)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, atol=1e-5, rtol=1e-5)


def test_a_window_bounds_the_cache():
    dit = dit_in("causal")
    x, t, text = inputs(frames=1)
    cache, sizes = KVCache(dit.config.num_layers, tokens_per_frame=4, window=2, past="joint"), []
    for _ in range(5):
        cache.start_chunk()
        dit(x, t, text, kv=cache.next_slot())
        cache.end_chunk(1)
        sizes.append(cache.nbytes())
    assert sizes[0] < sizes[1] == sizes[2] == sizes[4]
    assert cache.past_frames(0) == 2 and cache.frames_done == 5


def test_a_kv_cache_needs_a_causal_model():
    cache = KVCache(2, 4)
    x, t, text = inputs(frames=1)
    with pytest.raises(ValueError, match="causal"):
        dit_in("full")(x, t, text, kv=cache.next_slot())
