import math

import pytest
import torch

from kinema.convert.wan import convert_diffusers_dit
from kinema.dit.model import DiT, DiTConfig, collapse_padding
from kinema.dit.rope import axis_dims
from tests.conftest import tiny_dit


def test_rope_axis_split_matches_wan():
    assert axis_dims(128) == (44, 42, 42)
    assert axis_dims(12) == (4, 4, 4)


@torch.no_grad()
def test_output_shape_and_text_matters():
    dit = tiny_dit()
    x, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([100.0, 900.0])
    a, b = dit(x, t, torch.randn(2, 7, 384)), dit(x, t, torch.randn(2, 7, 384))
    assert a.shape == x.shape
    assert (a - b).abs().max() > 1e-4


@torch.no_grad()
def test_uniform_per_token_timesteps_equal_scalar_timestep():
    dit = tiny_dit()
    x, text = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 384)
    t = torch.tensor([250.0, 700.0])
    tokens = 3 * 4 * 4
    torch.testing.assert_close(dit(x, t, text), dit(x, t[:, None].expand(2, tokens), text), rtol=0, atol=1e-6)


@pytest.mark.parametrize("heads,head_dim,layers,ffn,text_dim", [(2, 12, 2, 64, 32), (3, 16, 1, 40, 20)])
@torch.no_grad()
def test_matches_diffusers_wan_transformer(heads, head_dim, layers, ffn, text_dim):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=text_dim, freq_dim=32, ffn_dim=ffn, num_layers=layers).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    cfg = DiTConfig(dim=heads * head_dim, num_heads=heads, num_layers=layers, ffn_dim=ffn, text_dim=text_dim,
                    freq_dim=32)
    dit = DiT(cfg).eval()
    dit.load_state_dict(convert_diffusers_dit(ref.state_dict()), strict=True)
    x, t = torch.randn(2, 16, 3, 8, 12), torch.tensor([999.0, 321.0])
    padded = torch.zeros(2, 40, text_dim)  # as Wan feeds prompts: token states, then zero rows (9 and 4 real rows)
    padded[0, :9], padded[1, :4] = torch.randn(9, text_dim), torch.randn(4, text_dim)
    for text in (torch.randn(2, 9, text_dim), padded):
        expected = ref(x, t, text, return_dict=False)[0]
        got = dit(x, t, text)
        assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5


def test_collapse_padding_folds_trailing_zero_rows_into_one_biased_row():
    text = torch.zeros(2, 12, 3)
    text[0, :5], text[1, :2] = 1.0, 2.0
    kept, bias = collapse_padding(text)
    assert kept.shape == (2, 6, 3) and kept[:, 5].eq(0).all()
    torch.testing.assert_close(bias, torch.tensor([[0, 0, 0, 0, 0, math.log(7)]]))
    assert collapse_padding(text[:, :6])[1] is None               # one padding row: nothing to fold
    assert collapse_padding(text.bfloat16())[1] is None           # log(n) is not exact enough in bf16
    everything = collapse_padding(torch.zeros(1, 8, 3))            # the empty prompt: one row for all eight
    assert everything[0].shape == (1, 1, 3) and everything[1].item() == pytest.approx(math.log(8))


@torch.no_grad()
def test_folded_padding_gives_the_unfolded_output(monkeypatch):
    dit = tiny_dit()
    x, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([100.0, 900.0])
    text = torch.zeros(2, 32, 384)
    text[0, :6], text[1, :3] = torch.randn(6, 384), torch.randn(3, 384)
    folded = dit(x, t, text)
    monkeypatch.setattr("kinema.dit.model.collapse_padding", lambda c: (c, None))
    torch.testing.assert_close(folded, dit(x, t, text), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pos_len", [None, 10])  # Wan2.1 I2V, and FLF2V (learned positions over both images' tokens)
@torch.no_grad()
def test_image_branch_matches_diffusers_wan_i2v_transformer(pos_len):
    """Wan2.1 I2V/FLF2V: kinema takes the CLIP tokens as `image=` beside the text; diffusers takes them in
    `encoder_hidden_states_image` and splits the text off the concatenated context with a hard-coded 512 rows."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    heads, head_dim, image_dim, text_dim = 2, 12, 20, 16
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
        out_channels=16, text_dim=text_dim, freq_dim=32, ffn_dim=48, num_layers=2, image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim, pos_embed_seq_len=pos_len).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    cfg = DiTConfig(in_channels=36, dim=heads * head_dim, num_heads=heads, num_layers=2, ffn_dim=48,
                    text_dim=text_dim, freq_dim=32, image_dim=image_dim, image_pos_len=pos_len)
    dit = DiT(cfg).eval()
    dit.load_state_dict(convert_diffusers_dit(ref.state_dict()), strict=True)
    x, t = torch.randn(2, 36, 3, 4, 6), torch.tensor([999.0, 321.0])
    text = torch.zeros(2, 512, text_dim)  # Wan's zero-padded prompts (7 and 3 real rows): the padding is folded
    text[0, :7], text[1, :3] = torch.randn(7, text_dim), torch.randn(3, text_dim)
    image = torch.randn(2, pos_len or 5, image_dim)
    theirs_image = image if pos_len is None else image.reshape(4, pos_len // 2, image_dim)  # diffusers: 2 per video
    expected = ref(x, t, text, encoder_hidden_states_image=theirs_image, return_dict=False)[0]
    got = dit(x, t, text, image=image)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5
    assert (dit(x, t, text, image=torch.randn_like(image)) - got).abs().max() > 1e-3   # the image matters
    with pytest.raises(ValueError, match="needs the image's CLIP tokens"):
        dit(x, t, text)
    with pytest.raises(ValueError, match="without an image branch"):
        tiny_dit()(torch.randn(1, 4, 1, 8, 8), t[:1], torch.randn(1, 5, 384), image=image[:1])
