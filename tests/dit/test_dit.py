import pytest
import torch

from kinema.convert.wan import convert_diffusers_dit
from kinema.dit.model import DiT, DiTConfig
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
    x, t, text = torch.randn(2, 16, 3, 8, 12), torch.tensor([999.0, 321.0]), torch.randn(2, 9, text_dim)
    expected = ref(x, t, text, return_dict=False)[0]
    got = dit(x, t, text)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5
