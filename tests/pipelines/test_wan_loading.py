"""Wan 2.1 checkpoints in the diffusers, original-release and single-file layouts load into kinema and match diffusers.

A tiny random WanPipeline (2-layer DiT, base-4 VAE, 2-layer umT5 with the MiniLM tokenizer standing in for umT5's) is
written with `save_pretrained`; the other layouts are made from its weights with the original key names, which are
checked against diffusers' own original->diffusers converters. Normalisation: diffusers' transformer sees the raw
initial noise and its `output_type="latent"` result is the normalised latent, which kinema's `denoise` returns too
(kinema's `VideoVAE.decode` un-normalises, as WanPipeline does before `vae.decode`).
"""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

import kinema
from kinema.cli import main
from kinema.convert import torch_files
from kinema.convert.wan import WAN21_LATENTS_MEAN, convert_diffusers_dit
from kinema.convert.wan_checkpoints import COMFY_PREFIX, convert_original_vae
from kinema.convert.wan_t5 import convert_original_t5
from kinema.pipelines.loading import ModelError
from kinema.pipelines.text_to_video import GenerationSettings
from kinema.pipelines.wan import T5_PTH, WAN_NEGATIVE_PROMPT
from kinema.text.encoder import TextEncoderConfig, resolve_source

diffusers = pytest.importorskip("diffusers")

PROMPT = "a red circle moving right"
WAN_CONFIG = {"model_type": "t2v", "patch_size": [1, 2, 2], "text_len": 512, "in_dim": 16, "dim": 24, "ffn_dim": 32,
              "freq_dim": 32, "text_dim": 32, "out_dim": 16, "num_heads": 2, "num_layers": 2, "window_size": [-1, -1],
              "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
TINY = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


def _tiny_wan_pipeline():
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dit = diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                          out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2).eval()
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True],
                                     latents_mean=(torch.randn(16, generator=g) * 0.5).tolist(),
                                     latents_std=(torch.rand(16, generator=g) + 0.5).tolist()).eval()
    with torch.no_grad():  # random weights everywhere (Wan zero-inits some layers)
        for p in [*dit.parameters(), *vae.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm"))
    text = UMT5EncoderModel(UMT5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                       num_heads=4, relative_attention_num_buckets=32,
                                       feed_forward_proj="gated-gelu")).eval()
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0, num_train_timesteps=1000)
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text, transformer=dit, vae=vae,
                                 scheduler=scheduler)


# ---- the original release's key names (test-side inverses, checked against diffusers' converters) ---------------

_VAE_PARTS = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.", "norm2.gamma": "residual.3.gamma",
              "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}
_VAE_TOP = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
            "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.",
            "encoder.conv_out.": "encoder.head.2.", "decoder.norm_out.": "decoder.head.0.",
            "decoder.conv_out.": "decoder.head.2."}


def _part(rest: str) -> str:
    return next((new + rest[len(old):] for old, new in _VAE_PARTS.items() if rest.startswith(old)), rest)


def to_original_vae(state: dict, num_res_blocks: int) -> dict:
    """diffusers AutoencoderKLWan names -> the original Wan2.1_VAE.pth names."""
    out, per_stage = {}, num_res_blocks + 2  # decoder: num_res_blocks + 1 resnets and an upsampler per stage
    middle = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}
    for key, value in state.items():
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)$", key):
            new = f"encoder.downsamples.{m.group(1)}.{_part(m.group(2))}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            new = f"decoder.upsamples.{int(m.group(1)) * per_stage + int(m.group(2))}.{_part(m.group(3))}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key):
            new = f"decoder.upsamples.{int(m.group(1)) * per_stage + per_stage - 1}.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.0)\.(.*)$", key):
            new = f"{m.group(1)}.middle.{middle[m.group(2)]}.{_part(m.group(3))}"
        else:
            new = next(new + key[len(old):] for old, new in _VAE_TOP.items() if key.startswith(old))
        out[new] = value
    return out


def to_original_t5(state: dict) -> dict:
    """transformers UMT5EncoderModel names -> Wan's T5Encoder names (models_t5_umt5-xxl-enc-bf16.pth)."""
    rules = [(r"^shared\.weight$", "token_embedding.weight"), (r"^encoder\.final_layer_norm\.", "norm."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
              r"blocks.\1.pos_embedding.embedding."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.", r"blocks.\1.attn.\2."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2.")]
    out = {}
    for key, value in state.items():
        if key == "encoder.embed_tokens.weight":
            continue
        new = next(re.sub(p, r, key) for p, r in rules if re.match(p, key))
        out[new] = value.clone()
    return out


# ---- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """(the diffusers reference pipeline, the folder it was saved to)."""
    ref = _tiny_wan_pipeline()
    root = tmp_path_factory.mktemp("wan") / "diffusers"
    ref.save_pretrained(root)
    return ref, root


@pytest.fixture(scope="module")
def pipe(wan):
    return kinema.load_pipeline(wan[1])


@pytest.fixture(scope="module")
def original_dir(wan):
    """The original release's layout: config.json, DiT safetensors, Wan2.1_VAE.pth, the T5 .pth, google/umt5-xxl."""
    ref, root = wan
    path = root.parent / "original"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(WAN_CONFIG))
    save_file(convert_diffusers_dit(ref.transformer.state_dict()), path / "diffusion_pytorch_model.safetensors")
    torch.save(to_original_vae(ref.vae.state_dict(), 1), path / "Wan2.1_VAE.pth")
    torch.save(to_original_t5(ref.text_encoder.state_dict()), path / T5_PTH)
    ref.tokenizer.save_pretrained(path / "google" / "umt5-xxl")
    return path


@pytest.fixture(scope="module")
def single_file(wan):
    """A ComfyUI-style single DiT file (prefixed original names) with a WanModel config sidecar, diffusers
    vae/, text_encoder/ and tokenizer/ next to it."""
    ref, root = wan
    path = root.parent / "single"
    path.mkdir()
    state = convert_diffusers_dit(ref.transformer.state_dict())
    save_file({COMFY_PREFIX + k: v.contiguous() for k, v in state.items()}, path / "wan_tiny.safetensors")
    (path / "wan_tiny.json").write_text(json.dumps(WAN_CONFIG))
    for sub in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(root / sub, path / sub)
    return path / "wan_tiny.safetensors"


# ---- diffusers layout: components and sampling match diffusers ----------------------------------------------------

@torch.no_grad()
def test_components_match_diffusers(pipe, wan):
    ref, _ = wan
    x, t, text = torch.randn(2, 16, 3, 4, 6), torch.tensor([999.0, 321.0]), torch.randn(2, 512, 32)
    assert _rel(pipe.dit(x, t, text), ref.transformer(x, t, text, return_dict=False)[0]) <= 1e-5
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert _rel(pipe.vae.encode_moments(video)[0], ref.vae.encode(video).latent_dist.mode()) <= 1e-5
    z = torch.randn(1, 16, 3, 4, 4)                       # normalised latents; diffusers' VAE takes raw ones
    raw = z / (1.0 / pipe.vae.latents_std) + pipe.vae.latents_mean
    assert _rel(pipe.vae.decode(z), ref.vae.decode(raw).sample) <= 1e-5
    prompts = ["a red  circle\n moving &amp; right", "x"]  # Wan's prompt cleaning: whitespace, html entities
    expected = ref.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512)[0]
    assert _rel(pipe.text_encoder(prompts), expected) <= 1e-6


def test_defaults_come_from_the_scheduler(pipe):
    d = pipe.defaults
    assert (d.sampler, d.schedule, d.shift, d.steps, d.guidance) == ("unipc", "diffusers", 3.0, 50, 5.0)
    assert (d.frames, d.height, d.width, d.fps, d.negative_prompt) == (81, 480, 832, 16.0, "")
    assert pipe.text_encoder.config.pad_to == 512 and pipe.text_encoder.config.clean == "wan"
    assert pipe.settings(steps=7, schedule="uniform", shift=1.0).schedule == "uniform"   # flags override
    with pytest.raises(ValueError, match="schedule"):
        pipe.settings(schedule="cosine")
    assert GenerationSettings().schedule == "uniform"                                     # kinema models unchanged


@torch.no_grad()
def test_sampling_matches_wan_pipeline(pipe, wan):
    ref, _ = wan
    s = pipe.settings(steps=4, guidance=3.0, frames=9, height=32, width=32)
    noise = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    text, negative = pipe.encode_prompts([PROMPT], s.negative_prompt)
    ours = pipe.denoise(noise.clone(), text, negative, s)
    theirs = ref(prompt=PROMPT, negative_prompt="", height=32, width=32, num_frames=9, num_inference_steps=4,
                 guidance_scale=3.0, latents=noise.clone(), output_type="latent").frames
    assert _rel(ours, theirs) <= 1e-4


# ---- the original release's names ---------------------------------------------------------------------------------

def test_original_names_agree_with_diffusers_converters(wan):
    from diffusers.loaders.single_file_utils import (convert_wan_transformer_to_diffusers,
                                                     convert_wan_vae_to_diffusers)

    ref, _ = wan
    dit = ref.transformer.state_dict()
    back = convert_wan_transformer_to_diffusers(dict(convert_diffusers_dit(dit)))
    assert back.keys() == dit.keys() and all(back[k] is dit[k] for k in dit)
    with torch.device("meta"):  # diffusers' VAE converter hard-codes the full Wan 2.1 layout
        full = diffusers.AutoencoderKLWan().state_dict()
    original = to_original_vae(full, 2)
    assert convert_wan_vae_to_diffusers(dict(original)).keys() == full.keys()
    assert convert_original_vae(original).keys() == full.keys()
    tiny = ref.vae.state_dict()
    assert convert_original_vae(to_original_vae(tiny, 1)).keys() == tiny.keys()
    t5 = ref.text_encoder.state_dict()
    assert convert_original_t5(to_original_t5(t5)).keys() == t5.keys()


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def test_original_layout_loads_the_same_weights(original_dir, pipe):
    orig = kinema.load_pipeline(original_dir)
    assert orig.dit.config == pipe.dit.config and _same_state(orig.dit, pipe.dit)
    assert _same_state(orig.vae, pipe.vae)
    assert orig.vae.config.latents_mean == WAN21_LATENTS_MEAN   # the release hard-codes Wan 2.1's statistics
    assert torch.equal(orig.text_encoder([PROMPT]), pipe.text_encoder([PROMPT]))
    d = orig.defaults
    assert (d.sampler, d.schedule, d.shift, d.negative_prompt) == ("unipc", "wan", 5.0, WAN_NEGATIVE_PROMPT)


@torch.no_grad()
def test_single_file_loads_the_same_weights(single_file, pipe):
    single = kinema.load_pipeline(single_file)
    assert single.dit.config == pipe.dit.config and _same_state(single.dit, pipe.dit)
    assert single.name == "wan_tiny" and single.defaults.schedule == "wan"
    named = single_file.with_name("diffusers_names.safetensors")  # a diffusers transformer file works too
    shutil.copy(single_file.parent.parent / "diffusers" / "transformer" / "diffusion_pytorch_model.safetensors", named)
    named.with_suffix(".json").write_text(json.dumps(WAN_CONFIG))
    assert _same_state(kinema.load_pipeline(named).dit, pipe.dit)
    sidecar = single_file.with_suffix(".json")
    sidecar.rename(sidecar.with_suffix(".off"))
    try:  # without the sidecar the head count is Wan's head dim 128, which a 24-wide model cannot have
        with pytest.raises(ModelError, match="config file next to the checkpoint"):
            kinema.load_pipeline(single_file)
    finally:
        sidecar.with_suffix(".off").rename(sidecar)


def test_sharded_transformer(wan, pipe, tmp_path):
    ref, root = wan
    copy = tmp_path / "sharded"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "transformer")
    ref.transformer.save_pretrained(copy / "transformer", max_shard_size="30KB")
    shards = sorted((copy / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and (copy / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert _same_state(kinema.load_pipeline(copy).dit, pipe.dit)
    shards[1].unlink()
    with pytest.raises(ModelError, match=f"missing weights file .*{shards[1].name}"):
        kinema.load_pipeline(copy)


# ---- the command line ---------------------------------------------------------------------------------------------

def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("layout", ["diffusers", "original", "single"])
def test_generate_each_layout(layout, wan, original_dir, single_file, tmp_path, capsys):
    import av

    model = {"diffusers": wan[1], "original": original_dir, "single": single_file}[layout]
    out = tmp_path / "clip.mp4"
    code, stdout, err = _run(capsys, "generate", PROMPT, "--model", str(model), "-o", str(out), *TINY)
    assert code == 0 and "wrote" in stdout, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.average_rate == 16 and sum(1 for _ in c.decode(s)) == 9


def _broken(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_clear_errors_one_line_exit_2(wan, original_dir, tmp_path, capsys):
    cases = []
    d = _broken(wan[1], tmp_path, "no_vae_weights")
    (d / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    cases.append((d, [], "no diffusion_pytorch_model*.safetensors in"))
    d = _broken(wan[1], tmp_path, "truncated")
    _truncate(d / "transformer" / "diffusion_pytorch_model.safetensors")
    cases.append((d, [], "transformer/diffusion_pytorch_model.safetensors"))
    d = _broken(original_dir, tmp_path, "no_vae")
    (d / "Wan2.1_VAE.pth").unlink()
    cases.append((d, [], "no VAE for the Wan model"))
    d = _broken(original_dir, tmp_path, "truncated_pth")
    _truncate(d / "Wan2.1_VAE.pth")
    cases.append((d, [], "Wan2.1_VAE.pth"))
    d = _broken(original_dir, tmp_path, "shape")
    (d / "config.json").write_text(json.dumps({**WAN_CONFIG, "ffn_dim": 64}))
    cases.append((d, [], "shape mismatch for blocks.0.ffn.0.weight"))
    d = tmp_path / "wrong_layout"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases.append((d, [], "not a model folder"))
    cases.append((original_dir / "Wan2.1_VAE.pth", [], "not a model folder"))
    cases.append((wan[1], ["--frames", "10"], "1 + 4k"))
    cases.append((original_dir, ["--height", "40"], "multiples of 16"))
    for model, extra, needle in cases:
        code, _, err = _run(capsys, "generate", PROMPT, "--model", str(model), "-o", str(tmp_path / "x.mp4"),
                            *TINY, *extra)
        assert code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, (model, err)
        assert not (tmp_path / "x.mp4").exists()


def test_pth_needs_torch_2_10(original_dir, monkeypatch):
    with pytest.raises(ValueError, match="CVE-2025-32434"):
        torch_files.read_pth(original_dir / "Wan2.1_VAE.pth", torch_version="2.9.1")
    monkeypatch.setattr(torch_files, "torch_can_read_pth", lambda version=None: False)
    with pytest.raises(ModelError, match="refusing to open .*Wan2.1_VAE.pth"):
        kinema.load_pipeline(original_dir)


def test_text_encoder_config_default_unchanged():
    assert "tokenizer" not in TextEncoderConfig().to_dict()
    assert TextEncoderConfig.from_dict(TextEncoderConfig().to_dict()) == TextEncoderConfig()


@torch.no_grad()
def test_bfloat16_loading_keeps_norms_and_modulation_in_fp32(wan, pipe):
    half = kinema.load_pipeline(wan[1], dtype=torch.bfloat16)
    assert half.dit.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert half.dit.blocks[0].norm3.weight.dtype == half.dit.blocks[0].modulation.dtype == torch.float32
    x, t, text = torch.randn(1, 16, 3, 4, 4), torch.tensor([500.0]), torch.randn(1, 512, 32)
    assert _rel(half.dit(x.bfloat16(), t, text.bfloat16()).float(), pipe.dit(x, t, text)) <= 5e-2
