"""Wan 2.1 I2V-14B / FLF2V-14B (36-channel DiT with CLIP image tokens) in the diffusers, original-release and
single-file layouts, against diffusers' WanImageToVideoPipeline.

Tiny random models: a 2-layer DiT with an image branch, a base-4 Wan 2.1 VAE (the release's latent statistics, which
the original layout hard-codes), a 2-layer umT5 with the MiniLM tokenizer standing in for umT5's, and a 2-layer CLIP
vision tower on 28 px images (5 tokens). The CLIP is as wide as the real one (1280, 16 heads of 80, exact GELU)
because the original release hard-codes that width in the DiT's `img_emb` and in its CLIP.
"""

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import kinema
from kinema.cli import main
from kinema.convert.wan import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, convert_diffusers_dit
from kinema.convert.wan_checkpoints import COMFY_PREFIX
from kinema.convert.wan_clip import convert_original_clip
from kinema.pipelines.image_to_video import ImageToVideoPipeline, condition_mask
from kinema.pipelines.wan import CLIP_PTH, T5_PTH, WAN_NEGATIVE_PROMPT
from tests.pipelines.test_wan22_loading import _randomise, _scheduler, _text_parts, _wan_config
from tests.pipelines.test_wan_loading import _rel, _same_state, to_original_t5, to_original_vae

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red circle moving right"
TINY = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]
CLIP_TOKENS = 5  # (28 / 14)^2 patches + the class token


@pytest.fixture(autouse=True)
def _ftfy_optional(monkeypatch):
    """diffusers 0.42's WanImageToVideoPipeline calls ftfy even when it is not installed (WanPipeline checks); without
    it, clean prompts as WanPipeline and kinema do (ftfy skipped)."""
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):
        monkeypatch.setattr(pipeline_wan_i2v, "ftfy", SimpleNamespace(fix_text=lambda text: text), raising=False)


def _image(seed: int, size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _tiny_dit(pos_len=None):
    return diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=36,
                                           out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                                           image_dim=1280, added_kv_proj_dim=24, pos_embed_seq_len=pos_len).eval()


def tiny_i2v(flf2v: bool = False):
    """A tiny Wan 2.1 I2V-14B-shaped (or FLF2V-14B-shaped) WanImageToVideoPipeline."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    g = torch.Generator().manual_seed(2)
    dit = _tiny_dit(2 * CLIP_TOKENS if flf2v else None)
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=list(WAN21_LATENTS_MEAN),
                                     latents_std=list(WAN21_LATENTS_STD)).eval()
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=16, image_size=28, patch_size=14,
                                            hidden_act="gelu")).eval()
    _randomise(g, dit, vae)
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    tokenizer, text = _text_parts()
    return diffusers.WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae,
                                             scheduler=_scheduler(16.0 if flf2v else 3.0),
                                             image_processor=processor, image_encoder=clip, transformer=dit)


def to_original_clip(state: dict) -> dict:
    """transformers CLIPVisionModel names -> the release's XLM-RoBERTa CLIP names (plus the parts kinema drops)."""
    rules = [(r"^embeddings\.patch_embedding\.", "visual.patch_embedding."),
             (r"^pre_layrnorm\.", "visual.pre_norm."), (r"^post_layernorm\.", "visual.post_norm."),
             (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"visual.transformer.\1.norm1."),
             (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"visual.transformer.\1.norm2."),
             (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"visual.transformer.\1.attn.proj."),
             (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"visual.transformer.\1.mlp.0."),
             (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"visual.transformer.\1.mlp.2.")]
    state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    out = {"visual.cls_embedding": state.pop("embeddings.class_embedding").reshape(1, 1, -1),
           "visual.pos_embedding": state.pop("embeddings.position_embedding.weight")[None],
           "visual.head": torch.zeros(1280, 8), "log_scale": torch.zeros(()),
           "textual.token_embedding.weight": torch.zeros(4, 8)}
    for key in [k for k in state if ".self_attn.q_proj." in k]:
        parts = [state.pop(key.replace(".q_proj.", f".{n}_proj.")) for n in "qkv"]
        layer, param = re.match(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(\w+)$", key).groups()
        out[f"visual.transformer.{layer}.attn.to_qkv.{param}"] = torch.cat(parts).clone()
    for key, value in state.items():
        out[next(re.sub(p, r, key) for p, r in rules if re.match(p, key))] = value.clone()
    return out


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    """(reference, {layout: path}) for a tiny I2V model in the diffusers, original and single-file layouts."""
    ref = tiny_i2v()
    root = tmp_path_factory.mktemp("i2v")
    ref.save_pretrained(root / "diffusers")
    original = root / "original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({**_wan_config(16, "i2v"), "in_dim": 36}))
    save_file(convert_diffusers_dit(ref.transformer.state_dict()), original / "diffusion_pytorch_model.safetensors")
    torch.save(to_original_vae(ref.vae.state_dict(), 1), original / "Wan2.1_VAE.pth")
    torch.save(to_original_t5(ref.text_encoder.state_dict()), original / T5_PTH)
    torch.save(to_original_clip(ref.image_encoder.state_dict()), original / CLIP_PTH)
    ref.tokenizer.save_pretrained(original / "google" / "umt5-xxl")
    single = root / "single"
    single.mkdir()
    save_file({COMFY_PREFIX + k: v.contiguous() for k, v in convert_diffusers_dit(ref.transformer.state_dict()).items()},
              single / "i2v.safetensors")
    shutil.copy(original / "config.json", single / "i2v.json")
    for sub in ("vae", "text_encoder", "tokenizer", "image_encoder", "image_processor"):
        shutil.copytree(root / "diffusers" / sub, single / sub)
    return ref, {"diffusers": root / "diffusers", "original": original, "single": single / "i2v.safetensors"}


@pytest.fixture(scope="module")
def flf2v(tmp_path_factory):
    ref = tiny_i2v(flf2v=True)
    root = tmp_path_factory.mktemp("flf2v") / "diffusers"
    ref.save_pretrained(root)
    return ref, root


# ---- the mask and the DiT's conditioning ----------------------------------------------------------------------------

def test_condition_mask_packs_frames_as_wan_does():
    one = condition_mask(9, (3, 2, 2), 4, last=False)
    assert one.shape == (4, 3, 2, 2)
    assert one[:, 0].eq(1).all() and one[:, 1:].eq(0).all()                 # latent frame 0: all 4 channels
    two = condition_mask(9, (3, 2, 2), 4, last=True)
    assert two[:, 0].eq(1).all() and two[:, 1].eq(0).all()
    assert two[:, 2, 0, 0].tolist() == [0, 0, 0, 1]                           # the last video frame: channel 3


# ---- diffusers layout: sampling matches diffusers ------------------------------------------------------------------

@torch.no_grad()
def _sample_both(pipe, ref, images, guidance=3.0, frames=9, seed=1):
    from PIL import Image

    s = pipe.settings(steps=4, guidance=guidance, frames=frames, height=32, width=32)
    noise = torch.randn(1, *pipe.latent_shape(s), generator=torch.Generator().manual_seed(seed))
    text, negative = pipe.encode_prompts([PROMPT], "")
    cond = pipe.encode_keyframes(s, 1, *images)
    ours = pipe.denoise(noise.clone(), text, negative, s, keyframes=cond)
    last = {"last_image": Image.fromarray(images[1])} if len(images) > 1 else {}
    theirs = ref(image=Image.fromarray(images[0]), **last, prompt=PROMPT, negative_prompt="", height=32, width=32,
                 num_frames=frames, num_inference_steps=4, guidance_scale=guidance, latents=noise.clone(),
                 output_type="latent").frames
    return ours, theirs


@torch.no_grad()
def test_i2v_sampling_matches_wan_image_to_video_pipeline(i2v):
    ref, paths = i2v
    pipe = kinema.load_pipeline(paths["diffusers"])
    assert isinstance(pipe, ImageToVideoPipeline) and pipe.dit.config.image_dim == 1280
    d = pipe.defaults
    assert (d.frames, d.height, d.width, d.fps, d.steps, d.guidance, d.shift) == (81, 480, 832, 16.0, 40, 5.0, 3.0)
    assert d.schedule == "diffusers" and d.negative_prompt == ""
    image = _image(0)
    tokens = pipe.image_encoder([image])
    from PIL import Image

    assert _rel(tokens, ref.encode_image(Image.fromarray(image), "cpu")) <= 1e-6    # CLIP's penultimate layer
    ours, theirs = _sample_both(pipe, ref, [image])
    assert _rel(ours, theirs) <= 1e-4
    other, _ = _sample_both(pipe, ref, [_image(1)])
    assert _rel(other, theirs) > 1e-2                                                # the image matters


def test_flf2v_sampling_matches_wan_image_to_video_pipeline(flf2v):
    ref, path = flf2v
    pipe = kinema.load_pipeline(path)
    assert pipe.two_images and pipe.defaults.shift == 16.0 and pipe.defaults.steps == 50
    ours, theirs = _sample_both(pipe, ref, [_image(0), _image(3)])
    assert _rel(ours, theirs) <= 1e-4
    with pytest.raises(ValueError, match="a first and a last image"):
        pipe("x", image=_image(0), frames=5, height=32, width=32, steps=1)


# ---- the other layouts ----------------------------------------------------------------------------------------------

def test_clip_names_round_trip(i2v):
    ref, _ = i2v
    state = {k.removeprefix("vision_model."): v for k, v in ref.image_encoder.state_dict().items()}
    back = convert_original_clip(to_original_clip(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def _wan_visual(state: dict, pixels: torch.Tensor, heads: int = 16) -> torch.Tensor:
    """The release's vision tower on its own names, written from W21 wan/modules/clip.py (VisionTransformer.forward
    with use_31_block=True: every block but the last; pre-norm, exact GELU, fused qkv as (3, heads, head_dim))."""
    import torch.nn.functional as F

    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], state[p + ".weight"], state[p + ".bias"], 1e-5)  # noqa: E731
    lin = lambda x, p: F.linear(x, state[p + ".weight"], state[p + ".bias"])  # noqa: E731
    x = F.conv2d(pixels, state["visual.patch_embedding.weight"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.cls_embedding"].expand(len(x), -1, -1), x], dim=1) + state["visual.pos_embedding"]
    x = ln(x, "visual.pre_norm")
    b, s, c = x.shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual.transformer."))
    for i in range(layers - 1):
        p = f"visual.transformer.{i}."
        q, k, v = lin(ln(x, p + "norm1"), p + "attn.to_qkv").view(b, s, 3, heads, c // heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + lin(a.transpose(1, 2).reshape(b, s, c), p + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, p + "norm2"), p + "mlp.0")), p + "mlp.2")
    return x


@torch.no_grad()
def test_original_clip_gives_the_release_tokens(i2v):
    """The converted CLIP .pth, run as transformers' CLIPVisionModel (hidden_states[-2]), gives what the release's
    own vision tower gives on the same pixels."""
    _, paths = i2v
    pipe = kinema.load_pipeline(paths["original"])
    image = _image(7)
    tokens = pipe.image_encoder([image])
    state = torch.load(paths["original"] / CLIP_PTH, weights_only=True)
    expected = _wan_visual(state, pipe.image_encoder.pixels([image]))
    assert tokens.shape == (1, CLIP_TOKENS, 1280) and _rel(tokens, expected) <= 1e-5


@torch.no_grad()
def test_layouts_load_the_same_weights(i2v):
    _, paths = i2v
    pipes = {k: kinema.load_pipeline(p) for k, p in paths.items()}
    base = pipes["diffusers"]
    image = _image(0)
    base.image_encoder([image])  # loads it
    for layout in ("original", "single"):
        p = pipes[layout]
        assert isinstance(p, ImageToVideoPipeline), layout
        assert p.dit.config == base.dit.config and _same_state(p.dit, base.dit), layout
        assert _same_state(p.vae, base.vae), layout
        p.image_encoder([image])  # loads it
        assert _same_state(p.image_encoder._model, base.image_encoder._model), layout
        d = p.defaults
        assert (d.steps, d.shift, d.schedule) == (40, 3.0, "wan")
        assert d.negative_prompt == "镜头晃动，" + WAN_NEGATIVE_PROMPT
    assert pipes["original"].image_encoder.config.processor is None     # the release's CLIP preprocessing
    assert _rel(pipes["single"].image_encoder([image]), base.image_encoder([image])) == 0.0
    squashed = pipes["original"].image_encoder([image])                 # a bicubic squash to 28 px, no crop
    assert squashed.shape == (1, CLIP_TOKENS, 1280) and _rel(squashed, base.image_encoder([image])) > 1e-3


# ---- the command line -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["diffusers", "original", "single"])
def test_generate_with_image_each_layout(layout, i2v, tmp_path, capsys):
    import av
    from PIL import Image

    img = tmp_path / "first.png"
    Image.fromarray(_image(5, (40, 48))).save(img)   # fitted to 32 x 32 (cover, centre-crop)
    out = tmp_path / "clip.mp4"
    code = main(["generate", PROMPT, "--model", str(i2v[1][layout]), "--image", str(img), "-o", str(out), *TINY])
    stdout, err = capsys.readouterr()
    assert code == 0 and "wrote" in stdout, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.average_rate == 16 and sum(1 for _ in c.decode(s)) == 5
    assert json.loads(out.with_suffix(".json").read_text())["image"] == str(img.resolve())


def test_image_models_need_their_images(i2v, flf2v, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "first.png"
    Image.fromarray(_image(5)).save(img)
    cases = [(i2v[1]["diffusers"], [], "is an image-to-video model: give it an image (--image)"),
             (i2v[1]["diffusers"], ["--image", str(img), "--last-image", str(img)], "a last image needs an FLF2V"),
             (flf2v[1], ["--image", str(img)], "needs a first and a last image")]
    for model, extra, needle in cases:
        code = main(["generate", PROMPT, "--model", str(model), "-o", str(tmp_path / "x.mp4"), *TINY, *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and needle in err, err
    broken = tmp_path / "no_clip"
    shutil.copytree(i2v[1]["original"], broken)
    (broken / CLIP_PTH).unlink()
    code = main(["generate", PROMPT, "--model", str(broken), "--image", str(img), "-o", str(tmp_path / "x.mp4"),
                 *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "no image encoder (CLIP)" in err and err.count("\n") == 1
