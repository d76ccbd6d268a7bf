import pytest
import torch
from dataclasses import replace
from einops import rearrange, repeat

from kinema.dit.model import DiT
from kinema.train.dit import DIT_PRESETS, patch_size
from kinema.train.repatch import repatch_state


def tiny(patch):
    return DiT(replace(DIT_PRESETS["tiny"], patch_size=patch))


def test_constant_patches_embed_as_before():
    torch.manual_seed(0)
    old, new = tiny((1, 2, 2)), tiny((1, 1, 1))
    new.load_state_dict(repatch_state(old.state_dict(), (1, 2, 2), (1, 1, 1), 4))
    coarse = torch.randn(1, 4, 3, 2, 3)                                         # one value per old patch
    x = repeat(coarse, "b c f h w -> b c f (h p) (w q)", p=2, q=2)              # (B, C, F, H, W)
    a = old.patch_embedding(x)                                                  # (B, D, F, 2, 3)
    b = new.patch_embedding(x)[..., ::2, ::2]                                   # one token per old patch
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_head_outputs_are_the_mean_of_the_old_offsets():
    torch.manual_seed(0)
    old, new = tiny((1, 2, 2)), tiny((1, 1, 1))
    torch.nn.init.normal_(old.head.head.weight)
    torch.nn.init.normal_(old.head.head.bias)
    new.load_state_dict(repatch_state(old.state_dict(), (1, 2, 2), (1, 1, 1), 4))
    h = torch.randn(5, old.config.dim)
    per_offset = rearrange(old.head.head(h), "n (p q r c) -> n (p q r) c", p=1, q=2, r=2)
    torch.testing.assert_close(new.head.head(h), per_offset.mean(1), atol=1e-5, rtol=1e-5)


def test_blocks_are_kept_and_a_coarser_patch_is_refused():
    old = tiny((1, 2, 2))
    state = repatch_state(old.state_dict(), (1, 2, 2), (1, 1, 1), 4)
    key = "blocks.0.self_attn.q.weight"
    assert key in state and torch.equal(state[key], old.state_dict()[key])
    with pytest.raises(ValueError, match="does not divide"):
        repatch_state(old.state_dict(), (1, 2, 2), (1, 4, 4), 4)


def test_patch_size_flag():
    assert patch_size("1,1,1") == (1, 1, 1)
    for bad in ("1,1", "a,b,c", "1,0,1"):
        with pytest.raises(Exception, match="three positive integers"):
            patch_size(bad)


def test_train_init_from_a_coarser_model_folder(tiny_model_dir):
    """`kinema train --init DIR --patch-size 1,1,1`: the DiT gets the finer patch and keeps the folder's blocks."""
    from safetensors.torch import load_file

    from kinema.pipelines.loading import load_pipeline
    from kinema.train.dit import build_dit, parse_args

    pipe = load_pipeline(tiny_model_dir)
    args = parse_args(["--out", "x", "--preset", "tiny", "--init", str(tiny_model_dir), "--patch-size", "1,1,1"])
    dit = build_dit(args, pipe.vae, pipe.text_encoder.config)
    saved = load_file(str(tiny_model_dir / "dit.safetensors"))
    assert dit.config.patch_size == (1, 1, 1) and dit.patch_embedding.weight.shape[2:] == (1, 1, 1)
    assert torch.equal(dit.state_dict()["blocks.1.ffn.0.weight"], saved["blocks.1.ffn.0.weight"])
    same = build_dit(parse_args(["--out", "x", "--preset", "tiny", "--init", str(tiny_model_dir)]), pipe.vae,
                     pipe.text_encoder.config)
    assert all(torch.equal(v, saved[k]) for k, v in same.state_dict().items())
