"""Wan 2.2 checkpoints: TI2V-5B (Wan 2.2 VAE, 48 channels, per-token timesteps) and T2V-A14B (two experts switched at
the boundary timestep), in the diffusers, original-release and single-file layouts, against diffusers' WanPipeline.

Tiny random models: a 2-layer DiT, a base-4 VAE with the real latent statistics (48 channels for Wan 2.2, which the
original layout hard-codes), a 2-layer umT5 with the MiniLM tokenizer standing in for umT5's.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import kinema
from kinema.cli import main
from kinema.convert.wan import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, convert_diffusers_dit
from kinema.convert.wan22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
from kinema.pipelines.two_experts import TwoExpertPipeline
from kinema.pipelines.wan import T5_PTH, WAN_NEGATIVE_PROMPT
from kinema.text.encoder import resolve_source
from tests.pipelines.test_wan_loading import _rel, _same_state, to_original_t5, to_original_vae
from tests.vae.test_wan22_parity import to_original_vae22

diffusers = pytest.importorskip("diffusers")

PROMPT = "a red circle moving right"
TINY = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


def _wan_config(channels: int, model_type: str) -> dict:
    """The original release's WanModel config.json of the tiny DiT."""
    return {"model_type": model_type, "patch_size": [1, 2, 2], "text_len": 512, "in_dim": channels, "dim": 24,
            "ffn_dim": 32, "freq_dim": 32, "text_dim": 32, "out_dim": channels, "num_heads": 2, "num_layers": 2,
            "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}


def _randomise(g, *modules):
    with torch.no_grad():  # random weights everywhere (Wan zero-inits some layers)
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _tiny_dit(channels: int):
    return diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=channels,
                                           out_channels=channels, text_dim=32, freq_dim=32, ffn_dim=32,
                                           num_layers=2).eval()


def _text_parts():
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm"))
    torch.manual_seed(0)
    text = UMT5EncoderModel(UMT5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                       num_heads=4, relative_attention_num_buckets=32,
                                       feed_forward_proj="gated-gelu")).eval()
    return tokenizer, text


def _scheduler(shift: float):
    return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             flow_shift=shift, num_train_timesteps=1000)


def tiny_ti2v():
    """A tiny Wan 2.2 TI2V-5B-shaped WanPipeline: 48-channel DiT, Wan 2.2 VAE, expand_timesteps."""
    g = torch.Generator().manual_seed(0)
    dit = _tiny_dit(48)
    vae = diffusers.AutoencoderKLWan(base_dim=4, decoder_base_dim=6, z_dim=48, dim_mult=[1, 2, 2, 2],
                                     num_res_blocks=1, is_residual=True, patch_size=2, in_channels=12,
                                     out_channels=12, temperal_downsample=[False, True, True],
                                     scale_factor_spatial=16, latents_mean=list(WAN22_LATENTS_MEAN),
                                     latents_std=list(WAN22_LATENTS_STD)).eval()
    _randomise(g, dit, vae)
    tokenizer, text = _text_parts()
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text, transformer=dit, vae=vae,
                                 scheduler=_scheduler(5.0), expand_timesteps=True)


def tiny_a14b(boundary: float = 0.9):
    """A tiny Wan 2.2 T2V-A14B-shaped WanPipeline: two 16-channel experts and the Wan 2.1 VAE."""
    g = torch.Generator().manual_seed(1)
    high, low = _tiny_dit(16), _tiny_dit(16)
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=list(WAN21_LATENTS_MEAN),
                                     latents_std=list(WAN21_LATENTS_STD)).eval()
    _randomise(g, high, low, vae)
    tokenizer, text = _text_parts()
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text, transformer=high, transformer_2=low,
                                 vae=vae, scheduler=_scheduler(3.0), boundary_ratio=boundary)


def _original_common(ref, path):
    torch.save(to_original_t5(ref.text_encoder.state_dict()), path / T5_PTH)
    ref.tokenizer.save_pretrained(path / "google" / "umt5-xxl")


def _save_dit(dit, folder, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(convert_diffusers_dit(dit.state_dict()), folder / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    """(reference, {layout: path}) for a tiny TI2V model in the diffusers, original and single-file layouts."""
    ref = tiny_ti2v()
    root = tmp_path_factory.mktemp("ti2v")
    ref.save_pretrained(root / "diffusers")
    original = root / "original"
    _save_dit(ref.transformer, original, _wan_config(48, "ti2v"))
    torch.save(to_original_vae22(ref.vae.state_dict(), 1), original / "Wan2.2_VAE.pth")
    _original_common(ref, original)
    single = root / "single"
    single.mkdir()
    save_file({f"model.diffusion_model.{k}": v.contiguous()
               for k, v in convert_diffusers_dit(ref.transformer.state_dict()).items()}, single / "ti2v.safetensors")
    (single / "ti2v.json").write_text(json.dumps(_wan_config(48, "ti2v")))
    for name in ("Wan2.2_VAE.pth", T5_PTH, "google"):
        src = original / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, single / name)
    return ref, {"diffusers": root / "diffusers", "original": original, "single": single / "ti2v.safetensors"}


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    """(reference, {layout: path}) for a tiny T2V-A14B model in the diffusers and original layouts."""
    ref = tiny_a14b()
    root = tmp_path_factory.mktemp("a14b")
    ref.save_pretrained(root / "diffusers")
    original = root / "original"
    _save_dit(ref.transformer, original / "high_noise_model", _wan_config(16, "t2v"))
    _save_dit(ref.transformer_2, original / "low_noise_model", _wan_config(16, "t2v"))
    torch.save(to_original_vae(ref.vae.state_dict(), 1), original / "Wan2.1_VAE.pth")
    _original_common(ref, original)
    return ref, {"diffusers": root / "diffusers", "original": original}


def _sample_both(pipe, ref, guidance, guidance_2=None, frames=9, size=(64, 32), seed=1):
    s = pipe.settings(steps=4, guidance=guidance, guidance_2=-1.0 if guidance_2 is None else guidance_2,
                      frames=frames, height=size[0], width=size[1])
    noise = torch.randn(1, *pipe.latent_shape(s), generator=torch.Generator().manual_seed(seed))
    text, negative = pipe.encode_prompts([PROMPT], "")
    ours = pipe.denoise(noise.clone(), text, negative, s)
    theirs = ref(prompt=PROMPT, negative_prompt="", height=size[0], width=size[1], num_frames=frames,
                 num_inference_steps=4, guidance_scale=guidance, guidance_scale_2=guidance_2, latents=noise.clone(),
                 output_type="latent").frames
    return ours, theirs


# ---- TI2V-5B --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_ti2v_sampling_matches_wan_pipeline(ti2v):
    ref, paths = ti2v
    pipe = kinema.load_pipeline(paths["diffusers"])
    assert pipe.vae.config.z_dim == 48 and pipe.vae.config.spatial_compression == 16
    d = pipe.defaults
    assert (d.frames, d.height, d.width, d.fps, d.steps, d.guidance, d.shift) == (121, 704, 1280, 24.0, 50, 5.0, 5.0)
    assert d.schedule == "diffusers" and d.negative_prompt == ""
    ours, theirs = _sample_both(pipe, ref, guidance=3.0)
    assert _rel(ours, theirs) <= 1e-4
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert _rel(pipe.vae.encode_moments(video)[0], ref.vae.encode(video).latent_dist.mode()) <= 1e-5


@torch.no_grad()
def test_ti2v_per_token_timesteps_match_diffusers(ti2v):
    """Image-to-video on TI2V: the first latent frame's tokens at t = 0, the rest at t (diffusers' expand_timesteps
    with the first-frame mask), through kinema's DiT loaded from the checkpoint."""
    ref, paths = ti2v
    pipe = kinema.load_pipeline(paths["diffusers"])
    x, text = torch.randn(1, 48, 3, 4, 2), torch.randn(1, 512, 32)
    t = torch.full((1, 3 * 2 * 1), 700.0)
    t[:, :2] = 0.0  # the 2 tokens of latent frame 0
    assert _rel(pipe.dit(x, t, text), ref.transformer(x, t, text, return_dict=False)[0]) <= 1e-5


def test_ti2v_layouts_load_the_same_weights(ti2v):
    _, paths = ti2v
    pipes = {k: kinema.load_pipeline(p) for k, p in paths.items()}
    base = pipes["diffusers"]
    for layout in ("original", "single"):
        p = pipes[layout]
        assert p.dit.config == base.dit.config and _same_state(p.dit, base.dit), layout
        assert p.vae.config == base.vae.config and _same_state(p.vae, base.vae), layout
        d = p.defaults
        assert (d.frames, d.fps, d.shift, d.schedule, d.negative_prompt) == (121, 24.0, 5.0, "wan",
                                                                            WAN_NEGATIVE_PROMPT)
    with pytest.raises(ValueError, match="multiples of 32"):
        base.settings(height=48, width=32)


# ---- T2V-A14B ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_a14b_sampling_matches_wan_pipeline(a14b):
    """4 steps at shift 3 are t = 999, 900, 750, 500: with boundary 0.9 the switch falls on a step exactly, and the
    two experts use different guidance scales."""
    ref, paths = a14b
    pipe = kinema.load_pipeline(paths["diffusers"])
    assert isinstance(pipe, TwoExpertPipeline) and pipe.boundary == 0.9
    ours, theirs = _sample_both(pipe, ref, guidance=4.0, guidance_2=2.0, size=(32, 32))
    assert _rel(ours, theirs) <= 1e-4
    ours_same, theirs_same = _sample_both(pipe, ref, guidance=3.0, size=(32, 32), seed=2)  # guidance_2 = guidance
    assert _rel(ours_same, theirs_same) <= 1e-4
    swapped = TwoExpertPipeline(pipe.text_encoder, pipe.vae, pipe.dit_2, pipe.dit, 0.9, pipe.defaults)
    assert _rel(_sample_both(swapped, ref, guidance=4.0, guidance_2=2.0, size=(32, 32))[0], theirs) > 1e-2


def test_a14b_original_layout_loads_the_same_experts(a14b):
    _, paths = a14b
    base, orig = kinema.load_pipeline(paths["diffusers"]), kinema.load_pipeline(paths["original"])
    assert isinstance(orig, TwoExpertPipeline) and orig.boundary == 0.875   # the release's T2V boundary
    assert _same_state(orig.dit, base.dit) and _same_state(orig.dit_2, base.dit_2)
    assert _same_state(orig.vae, base.vae)
    d = orig.defaults
    assert (d.steps, d.guidance, d.guidance_2, d.shift, d.frames, d.fps) == (40, 4.0, 3.0, 12.0, 81, 16.0)


# ---- the command line -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, layout", [("ti2v", "diffusers"), ("ti2v", "original"), ("ti2v", "single"),
                                           ("a14b", "diffusers"), ("a14b", "original")])
def test_generate_each_layout(model, layout, ti2v, a14b, tmp_path, capsys):
    import av

    path = {"ti2v": ti2v, "a14b": a14b}[model][1][layout]
    out = tmp_path / "clip.mp4"
    code = main(["generate", PROMPT, "--model", str(path), "-o", str(out), *TINY, "--guidance-2", "2"])
    stdout, err = capsys.readouterr()
    assert code == 0 and "wrote" in stdout, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.average_rate == (24 if model == "ti2v" else 16) and sum(1 for _ in c.decode(s)) == 5
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["guidance_2"] == 2.0


def test_unsupported_two_expert_image_model_is_a_clear_error(a14b, tmp_path, capsys):
    _, paths = a14b
    bad = tmp_path / "i2v_a14b"
    shutil.copytree(paths["original"], bad)
    for expert in ("high_noise_model", "low_noise_model"):
        (bad / expert / "config.json").write_text(json.dumps(_wan_config(36, "i2v")))
    code = main(["generate", PROMPT, "--model", str(bad), "-o", str(tmp_path / "x.mp4"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model_type 'i2v'" in err
