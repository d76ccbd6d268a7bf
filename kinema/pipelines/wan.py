"""Loading Wan checkpoints as a kinema pipeline: Wan 2.1 T2V (1.3B, 14B; z16 VAE), Wan 2.2 TI2V-5B (48-channel DiT,
Wan 2.2 VAE with 16x spatial compression), Wan 2.2 T2V-A14B (two 14B experts switched at the boundary timestep,
a `TwoExpertPipeline`) and Wan 2.1 I2V-14B / FLF2V-14B (36-channel DiT with an image branch fed CLIP tokens, an
`ImageToVideoPipeline`).

`kinema.load_pipeline(path)` / `kinema generate --model PATH` recognise three layouts:

1. diffusers folder (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers): `model_index.json` (WanPipeline; `expand_timesteps`
   for TI2V; `transformer_2` + `boundary_ratio` for A14B; WanImageToVideoPipeline for I2V/FLF2V, which adds
   `image_encoder/` (transformers CLIPVisionModel) and `image_processor/` (CLIPImageProcessor)), `transformer/`
   (config.json + diffusion_pytorch_model*.safetensors, sharded with a `.safetensors.index.json` or not), `vae/`
   (AutoencoderKLWan), `text_encoder/` (transformers UMT5EncoderModel), `tokenizer/`, `scheduler/`.
2. original release folder (e.g. Wan-AI/Wan2.1-T2V-1.3B): `config.json` (WanModel fields; model_type "ti2v" for
   TI2V-5B, "i2v" / "flf2v" for I2V-14B / FLF2V-14B, which also need
   `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`), the DiT `diffusion_pytorch_model*.safetensors`
   (original key names, which are kinema's), `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`
   and the tokenizer folder `google/umt5-xxl/`. A14B puts a config.json and the DiT files in each of
   `high_noise_model/` and `low_noise_model/` instead.
3. a single DiT file `FILE.safetensors` with original key names (ComfyUI's `model.diffusion_model.` prefix is
   stripped; a file with diffusers' names is converted). Its config comes from `FILE.json` (WanModel config.json
   fields) next to it when present, else from the tensor shapes with Wan's head dim 128.

Companions (2 and 3 look in the checkpoint's folder, first match wins):
- VAE: `vae/` (diffusers folder), `Wan2.1_VAE.safetensors` or `wan_2.1_vae.safetensors` (original key names,
  e.g. ComfyUI's), `Wan2.1_VAE.pth`; the `Wan2.2_VAE.*` / `wan2.2_vae.safetensors` files first for a 48-channel DiT.
- text encoder: `text_encoder/` (a transformers umT5 folder), else `models_t5_umt5-xxl-enc-bf16.pth` (converted by
  `kinema.convert.wan_t5`); tokenizer: `tokenizer/`, `google/umt5-xxl/`, or the `text_encoder/` folder itself.
- image encoder (I2V/FLF2V only): `image_encoder/` (with `image_processor/`: diffusers' preprocessing; without it the
  release's), else the release's CLIP .pth (`kinema.convert.wan_clip`; the release's preprocessing).
`.pth` files need torch >= 2.10 (see `kinema.convert.torch_files`).

Latent normalisation. Sampling runs in the *normalised* latent space z_n = (z - mean) / std of the VAE config. In
diffusers' WanPipeline the initial noise goes to the transformer as it is, the scheduler steps in that space, and only
before decoding does it compute z = z_n / (1 / std) + mean; `output_type="latent"` returns z_n. kinema's
`VideoVAE.decode` takes z_n and applies z_n * std + mean itself. So the same noise gives the same trajectory, and
`TextToVideoPipeline.denoise` returns what diffusers returns with `output_type="latent"`.

Defaults per model kind (`WAN_MODEL_DEFAULTS`, the original release's): UniPC; T2V 50 steps, guidance 5, shift 5,
81 frames at 16 fps, 480x832; TI2V-5B 50 steps, guidance 5, shift 5, 121 frames at 24 fps, 704x1280 (sizes are
multiples of 32 = 16x VAE x patch 2); T2V-A14B 40 steps, guidance 4 (high-noise expert) / 3 (low-noise), shift 12,
81 frames at 16 fps, 720x1280, boundary 0.875; I2V-14B 40 steps, guidance 5, shift 3, 81 frames at 16 fps, 480x832
(the 480P model's recipe; the 720P one wants --height 720 --width 1280 --shift 5); FLF2V-14B 50 steps, guidance 5,
shift 16, 720x1280; the image models' negative prompts start with the release's camera-shake / scene-cut terms.
diffusers folders take the scheduler's grid and shift ("diffusers" schedule, flow_shift) and an empty negative prompt
(diffusers' defaults); the other layouts take the original release's grid ("wan" schedule) and its Chinese negative
prompt (Wan's generate.py). Flags override all of these; frame counts and sizes the model cannot take are refused
with the rule, not silently rounded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from kinema.convert import torch_files
from kinema.convert.wan import (convert_diffusers_dit, convert_diffusers_vae, diffusers_dit_key,
                               vae_config_from_diffusers)
from kinema.convert.wan22 import convert_original_vae22, is_wan22_original_vae, vae22_config_from_state
from kinema.convert.wan_checkpoints import (convert_original_vae, dit_config_from_diffusers, dit_config_from_state,
                                            dit_config_from_wan, strip_comfy_prefix, vae_config_from_state)
from kinema.dit.model import DiT, DiTConfig
from kinema.pipelines.image_encoder import ImageEncoder, ImageEncoderConfig
from kinema.pipelines.image_to_video import ImageToVideoPipeline
from kinema.pipelines.loading import ModelError
from kinema.pipelines.memory import plan_memory
from kinema.pipelines.text_to_video import GenerationSettings, TextToVideoPipeline
from kinema.pipelines.two_experts import TwoExpertPipeline
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.vae.model import VideoVAE

log = logging.getLogger(__name__)

LAYOUTS_HELP = ("a diffusers folder with model_index.json, an original Wan folder with config.json, or a DiT "
                ".safetensors file")
DIT_FILES = "diffusion_pytorch_model*.safetensors"
T5_PTH = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_PTH = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"  # the release's CLIP (I2V / FLF2V)
TEXT_LEN = 512
# wan/configs/shared_config.py `sample_neg_prompt`: the original release's default negative prompt
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                       "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
# Generation defaults per model kind, as the original release's generate.py / configs set them (W21 generate.py,
# W22 wan/configs): "t2v" Wan 2.1 T2V, "ti2v" Wan 2.2 TI2V-5B, "t2v-a14b" Wan 2.2 T2V-A14B (guidance = the
# high-noise expert's scale, guidance_2 the low-noise expert's; the release writes them as (low, high) = (3, 4)).
WAN_MODEL_DEFAULTS = {
    "t2v": dict(frames=81, height=480, width=832, fps=16.0, steps=50, guidance=5.0, shift=5.0),
    "ti2v": dict(frames=121, height=704, width=1280, fps=24.0, steps=50, guidance=5.0, shift=5.0),
    "t2v-a14b": dict(frames=81, height=720, width=1280, fps=16.0, steps=40, guidance=4.0, guidance_2=3.0,
                     shift=12.0),
    "i2v": dict(frames=81, height=480, width=832, fps=16.0, steps=40, guidance=5.0, shift=3.0),
    "flf2v": dict(frames=81, height=720, width=1280, fps=16.0, steps=50, guidance=5.0, shift=16.0),
}
IMAGE_KINDS = ("i2v", "flf2v")  # conditioned through channels and CLIP tokens (`ImageToVideoPipeline`)
# W21 wan/configs/wan_i2v_14B.py / wan_flf2v_14B.py: the image models' negative prompts add camera shake / scene cuts
WAN_NEGATIVE_PREFIX = {"i2v": "镜头晃动，", "flf2v": "镜头切换，"}
# The timestep fraction at which a two-expert model switches from its high-noise to its low-noise expert.
WAN_BOUNDARY = {"t2v-a14b": 0.875}


def model_defaults(kind: str) -> GenerationSettings:
    """The original release's defaults for a model kind (a key of WAN_MODEL_DEFAULTS)."""
    return GenerationSettings(**WAN_MODEL_DEFAULTS[kind], sampler="unipc", schedule="wan",
                              negative_prompt=WAN_NEGATIVE_PREFIX.get(kind, "") + WAN_NEGATIVE_PROMPT)


def dit_kind(config: DiTConfig) -> str:
    """The model kind of a single DiT read off its config (FLF2V and I2V by their image branch)."""
    if config.image_pos_len is not None:
        return "flf2v"
    if config.image_dim is not None:
        return "i2v"
    return "ti2v" if config.in_channels == 48 else "t2v"


T2V_DEFAULTS = model_defaults("t2v")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"missing file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def _is_wan_model_config(path: Path) -> bool:
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(c, dict) and "dim" in c and "num_heads" in c and "num_layers" in c


def detect_layout(path: Path) -> str | None:
    """"diffusers", "original" or "single" (see the module docstring), or None."""
    path = Path(path)
    if path.is_file():
        return "single" if path.suffix == ".safetensors" else None
    if (path / "model_index.json").is_file():
        return "diffusers"
    if _is_wan_model_config(path / "config.json") or _is_wan_model_config(path / "high_noise_model" / "config.json"):
        return "original"
    return None


# ---- files and weights ----------------------------------------------------------------------------------------------

def _checked(source: Path | str | None, fn, *args, **kwargs):
    """fn(...) with ValueErrors as ModelErrors, prefixed with `source` (None: the message names the file)."""
    try:
        return fn(*args, **kwargs)
    except ModelError:
        raise
    except ValueError as e:
        raise ModelError(str(e) if source is None else f"{source}: {e}") from e


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The safetensors of a DiT (or diffusers VAE) in `folder`: the shards an index lists (each must exist), else
    every diffusion_pytorch_model*.safetensors."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{index} has no weight_map")
        files = tuple(folder / name for name in sorted(set(weight_map.values())))
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise ModelError(f"missing weights file {missing[0]} (listed in {index.name})")
        return files
    files = tuple(sorted(folder.glob(DIT_FILES)))
    if not files:
        raise ModelError(f"no {DIT_FILES} in {folder}")
    return files


def check_state(module: torch.nn.Module, state: dict, source: str) -> None:
    """Every key of `module` in `state` with its shape, and nothing else; ModelError naming `source` otherwise."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"{source} does not fit the model: missing keys {missing[:5]}, unexpected keys "
                         f"{unexpected[:5]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ModelError(f"{source}: shape mismatch for {k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}")



def build_dit(config: DiTConfig, state: dict, source: str) -> DiT:
    """A DiT holding `state` (original key names), built on the meta device (no random init of billions of weights)."""
    with torch.device("meta"):
        dit = DiT(config)
    check_state(dit, state, source)
    dit.load_state_dict(state, assign=True)
    return dit.eval()


def _source(files: tuple[Path, ...]) -> str:
    return str(files[0]) if len(files) == 1 else str(files[0].parent / DIT_FILES)


def read_dit_state(files: tuple[Path, ...], dtype: torch.dtype, diffusers_names: bool = False,
                   prefix: str = "") -> dict:
    """The DiT weights in `files` with original key names (diffusers' converted when `diffusers_names`)."""
    state = _checked(None, torch_files.read_safetensors, list(files), dtype, prefix)
    return convert_diffusers_dit(state) if diffusers_names else state


def _check_fit(config: DiTConfig, vae: VideoVAE, source: Path, kind: str = "t2v") -> None:
    z = vae.config.z_dim
    want = 2 * z + vae.config.temporal_compression if kind in IMAGE_KINDS else z  # I2V: noise, mask, condition
    if config.in_channels != want or config.out_channels != z:
        raise ModelError(f"{source}: the DiT takes {config.in_channels} and gives {config.out_channels} latent "
                         f"channels but a {kind} model with this VAE takes {want} and gives {z} (supported: Wan 2.1 "
                         "T2V, I2V/FLF2V (36 = 16 + 4 mask + 16) and Wan 2.2 A14B T2V with the Wan 2.1 VAE, Wan 2.2 "
                         "TI2V-5B with the Wan 2.2 VAE)")


# ---- VAE ------------------------------------------------------------------------------------------------------------

VAE_FILES = {16: ("Wan2.1_VAE.safetensors", "wan_2.1_vae.safetensors", "Wan2.1_VAE.pth"),
             48: ("Wan2.2_VAE.safetensors", "wan2.2_vae.safetensors", "Wan2.2_VAE.pth")}  # by latent channels


def _read_weights(path: Path, dtype: torch.dtype | None = None) -> dict:
    if path.suffix == ".pth":
        return _checked(None, torch_files.read_pth, path)
    return _checked(None, torch_files.read_safetensors, [path], dtype)


def _build_vae(config, state: dict, source: str) -> VideoVAE:
    vae = VideoVAE(config)
    check_state(vae, state, source)
    vae.load_state_dict({k: v.float() for k, v in state.items()})
    return vae.eval()


def load_diffusers_vae_folder(folder: Path) -> VideoVAE:
    """kinema's VAE from a diffusers `vae/` folder (AutoencoderKLWan, Wan 2.1 or 2.2 layout)."""
    config = _checked(folder / "config.json", vae_config_from_diffusers, _read_json(folder / "config.json"))
    files = weight_files(folder)
    state = _checked(_source(files), convert_diffusers_vae, _checked(None, torch_files.read_safetensors, list(files)))
    return _build_vae(config, state, _source(files))


def load_original_vae(path: Path) -> VideoVAE:
    """kinema's VAE from the original release's `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` (or a safetensors file with
    their key names); which one it is is read off the keys."""
    state = _read_weights(path)
    if is_wan22_original_vae(state):
        state = _checked(path, convert_original_vae22, state)
        return _build_vae(_checked(path, vae22_config_from_state, state), state, str(path))
    state = _checked(path, convert_original_vae, state)
    return _build_vae(_checked(path, vae_config_from_state, state), state, str(path))


def find_vae(folder: Path, z_dim: int = 16) -> VideoVAE:
    """The VAE next to a Wan DiT: `vae/` (diffusers), else the original files, those with `z_dim` channels first."""
    if (folder / "vae" / "config.json").is_file():
        return load_diffusers_vae_folder(folder / "vae")
    names = [*VAE_FILES.get(z_dim, ()), *(n for z, ns in VAE_FILES.items() if z != z_dim for n in ns)]
    for name in names:
        if (folder / name).is_file():
            return load_original_vae(folder / name)
    raise ModelError(f"no VAE for the Wan model in {folder}: looked for vae/ (diffusers) and {', '.join(names)}")


# ---- text encoder ---------------------------------------------------------------------------------------------------

TOKENIZER_DIRS = ("tokenizer", "google/umt5-xxl")


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file()
                                   for n in ("tokenizer.json", "tokenizer_config.json", "spiece.model"))


def _text_dim(source: Path) -> int:
    """The width of the text encoder's states: d_model of a transformers config, or read off the T5 .pth."""
    if source.suffix == ".pth":
        from kinema.convert.wan_t5 import convert_original_t5, umt5_config_from_original

        state = _checked(None, torch_files.read_pth, source)  # memory-mapped: only the header is read now
        _checked(source, convert_original_t5, state)
        return _checked(source, umt5_config_from_original, state)["d_model"]
    config = _read_json(source / "config.json")
    dim = config.get("d_model", config.get("hidden_size"))
    if not isinstance(dim, int):
        raise ModelError(f"{source / 'config.json'} has no d_model")
    return dim


def find_text_encoder(folder: Path, text_dim: int) -> TextEncoderConfig:
    """The umT5 text encoder for a Wan model in `folder`: a transformers folder, or the original .pth."""
    te = folder / "text_encoder"
    if (te / "config.json").is_file():
        source = te
    elif (folder / T5_PTH).is_file():
        source = folder / T5_PTH
    else:
        raise ModelError(f"no text encoder for the Wan model in {folder}: looked for text_encoder/ (transformers "
                         f"umT5) and {T5_PTH}")
    candidates = [folder / d for d in TOKENIZER_DIRS] + [te]
    tokenizer = next((d for d in candidates if _has_tokenizer(d)), None)
    if tokenizer is None:
        raise ModelError(f"no tokenizer for the Wan model in {folder}: looked for {', '.join(TOKENIZER_DIRS)} and "
                         "text_encoder/")
    dim = _text_dim(source)
    if dim != text_dim:
        raise ModelError(f"{source} gives {dim}-d text states but the DiT takes text_dim {text_dim}")
    return TextEncoderConfig(source=str(source), tokenizer=str(tokenizer), max_length=TEXT_LEN, pad_to=TEXT_LEN,
                             dim=dim, clean="wan")


# ---- image encoder (I2V / FLF2V) ------------------------------------------------------------------------------------

def _clip_width(source: Path) -> int:
    """The width of a CLIP's tokens: hidden_size of a transformers config, or read off the release's CLIP .pth."""
    if source.suffix == ".pth":
        from kinema.convert.wan_clip import clip_config_from_original

        state = _checked(None, torch_files.read_pth, source)  # memory-mapped: only the header is read now
        return _checked(source, clip_config_from_original, state)["hidden_size"]
    c = _read_json(source / "config.json")
    width = c.get("hidden_size", (c.get("vision_config") or {}).get("hidden_size"))
    if not isinstance(width, int):
        raise ModelError(f"{source / 'config.json'} has no hidden_size")
    return width


def find_image_encoder(folder: Path, image_dim: int) -> ImageEncoderConfig:
    """The CLIP of a Wan 2.1 I2V / FLF2V model in `folder`: `image_encoder/` (transformers CLIPVisionModel, with
    diffusers' `image_processor/` when there is one), else the release's CLIP .pth."""
    encoder, processor = folder / "image_encoder", folder / "image_processor"
    if (encoder / "config.json").is_file():
        source = encoder
        if not (processor / "preprocessor_config.json").is_file():
            log.warning("no %s: CLIP input prepared as the original release does", processor)
            processor = None
    elif (folder / CLIP_PTH).is_file():
        source, processor = folder / CLIP_PTH, None
    else:
        raise ModelError(f"no image encoder (CLIP) for the Wan image-to-video model in {folder}: looked for "
                         f"image_encoder/ (transformers CLIPVisionModel) and {CLIP_PTH}")
    width = _clip_width(source)
    if width != image_dim:
        raise ModelError(f"{source} gives {width}-wide image tokens but the DiT takes image_dim {image_dim}")
    return ImageEncoderConfig(str(source), None if processor is None else str(processor))


def _image_encoder(folder: Path, config: DiTConfig) -> ImageEncoderConfig | None:
    return None if config.image_dim is None else find_image_encoder(folder, config.image_dim)


# ---- defaults -------------------------------------------------------------------------------------------------------

_UNIPC_DEFAULTS = {"solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
                   "final_sigmas_type": "zero", "disable_corrector": [], "num_train_timesteps": 1000}


def diffusers_defaults(scheduler_config: Path, kind: str = "t2v") -> GenerationSettings:
    """A model kind's defaults with diffusers' empty negative prompt and its scheduler's grid and shift."""
    base = replace(model_defaults(kind), negative_prompt="")
    if not scheduler_config.is_file():
        log.warning("no %s: sampling on the original Wan grid with shift %g", scheduler_config, base.shift)
        return base
    c = _read_json(scheduler_config)
    flow_unipc = (c.get("_class_name") == "UniPCMultistepScheduler" and c.get("use_flow_sigmas")
                  and c.get("prediction_type") == "flow_prediction")
    odd = {k: c[k] for k, v in _UNIPC_DEFAULTS.items() if c.get(k, v) != v}
    if not flow_unipc or odd:
        log.warning("%s: %s %s is not the flow UniPC kinema reproduces; sampling with kinema's UniPC on diffusers' "
                    "grid", scheduler_config, c.get("_class_name"), odd or "")
    return replace(base, schedule="diffusers", shift=float(c.get("flow_shift", c.get("shift", 1.0))))


# ---- the three layouts ----------------------------------------------------------------------------------------------
# Each reader returns (DiTs, VAE, text encoder config, defaults, kind, boundary, image encoder config or None):
# one DiT, or the (high-noise, low-noise) experts.

def _diffusers_kind(index: dict, index_path: Path) -> str:
    """"t2v", "ti2v", "t2v-a14b" or (WanImageToVideoPipeline) "i2v"; FLF2V is told from the transformer's config."""
    cls = index.get("_class_name")
    if cls not in ("WanPipeline", "WanImageToVideoPipeline"):
        raise ModelError(f"{index_path}: pipeline {cls!r} is not supported (WanPipeline: Wan 2.1 T2V, Wan 2.2 "
                         "TI2V-5B and T2V-A14B; WanImageToVideoPipeline: Wan 2.1 I2V-14B and FLF2V-14B)")
    two = (index.get("transformer_2") or [None])[0] is not None
    if two != (index.get("boundary_ratio") is not None):
        raise ModelError(f"{index_path}: a second transformer needs a boundary_ratio and the other way round")
    if cls == "WanImageToVideoPipeline" and two:
        raise ModelError(f"{index_path}: two-expert image-to-video (Wan 2.2 I2V-A14B) is not supported")
    if index.get("expand_timesteps"):
        return "ti2v"
    return "i2v" if cls == "WanImageToVideoPipeline" else "t2v-a14b" if two else "t2v"


def _diffusers_dit(folder: Path, dtype: torch.dtype) -> DiT:
    config = _checked(folder / "config.json", dit_config_from_diffusers, _read_json(folder / "config.json"))
    files = weight_files(folder)
    return build_dit(config, read_dit_state(files, dtype, diffusers_names=True), _source(files))


def _load_diffusers(path: Path, dtype: torch.dtype):
    index_path = path / "model_index.json"
    index = _read_json(index_path)
    kind = _diffusers_kind(index, index_path)
    folders = [path / "transformer"] + ([path / "transformer_2"] if kind == "t2v-a14b" else [])
    configs = [_checked(f / "config.json", dit_config_from_diffusers, _read_json(f / "config.json")) for f in folders]
    if kind == "i2v" and configs[0].image_pos_len is not None:
        kind = "flf2v"
    vae = find_vae(path, configs[0].out_channels)
    for folder, config in zip(folders, configs):
        _check_fit(config, vae, folder / "config.json", kind)
    text = find_text_encoder(path, configs[0].text_dim)
    image = _image_encoder(path, configs[0])
    dits = [_diffusers_dit(f, dtype) for f in folders]
    defaults = diffusers_defaults(path / "scheduler" / "scheduler_config.json", kind)
    boundary = index.get("boundary_ratio")
    return dits, vae, text, defaults, kind, None if boundary is None else float(boundary), image


EXPERT_DIRS = ("high_noise_model", "low_noise_model")  # the original A14B release: one full DiT folder per expert


def _original_kind(path: Path, config: dict) -> str:
    if (path / EXPERT_DIRS[0]).is_dir():
        if config.get("model_type", "t2v") != "t2v":
            raise ModelError(f"{path}: two-expert model_type {config.get('model_type')!r} is not supported (Wan 2.2 "
                             "T2V-A14B 't2v' only; image-to-video runs with one expert: Wan 2.1 I2V/FLF2V)")
        return "t2v-a14b"
    if config.get("model_type") in IMAGE_KINDS:
        return config["model_type"]
    return "ti2v" if config.get("model_type") == "ti2v" or config.get("in_dim") == 48 else "t2v"


def _load_original(path: Path, dtype: torch.dtype):
    folders = [path / d for d in EXPERT_DIRS] if (path / EXPERT_DIRS[0]).is_dir() else [path]
    raw = [_read_json(f / "config.json") for f in folders]
    kind = _original_kind(path, raw[0])
    configs = [_checked(f / "config.json", dit_config_from_wan, c) for f, c in zip(folders, raw)]
    vae = find_vae(path, configs[0].out_channels)
    for folder, config in zip(folders, configs):
        _check_fit(config, vae, folder / "config.json", kind)
    text = find_text_encoder(path, configs[0].text_dim)
    image = _image_encoder(path, configs[0])
    dits = []
    for folder, config in zip(folders, configs):
        files = weight_files(folder)
        dits.append(build_dit(config, read_dit_state(files, dtype), _source(files)))
    return dits, vae, text, model_defaults(kind), kind, WAN_BOUNDARY.get(kind), image


def _load_single(path: Path, dtype: torch.dtype):
    shapes = _checked(None, torch_files.safetensors_shapes, path)
    prefix = strip_comfy_prefix(shapes)
    shapes = {k.removeprefix(prefix): v for k, v in shapes.items()}
    diffusers_names = any(k.startswith("condition_embedder.") for k in shapes)
    if diffusers_names:
        shapes = {diffusers_dit_key(k): v for k, v in shapes.items()}
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        config = _checked(sidecar, dit_config_from_wan, _read_json(sidecar))
    else:
        config = _checked(path, dit_config_from_state, shapes)
    kind = dit_kind(config)
    vae = find_vae(path.parent, config.out_channels)
    _check_fit(config, vae, path, kind)
    text = find_text_encoder(path.parent, config.text_dim)
    image = _image_encoder(path.parent, config)
    dit = build_dit(config, read_dit_state((path,), dtype, diffusers_names, prefix), str(path))
    return [dit], vae, text, model_defaults(kind), kind, None, image


def load_wan_pipeline(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      offload: str = "auto") -> TextToVideoPipeline:
    """A text-to-video (or, for I2V / FLF2V, image-to-video) pipeline from a Wan checkpoint in any of the three
    layouts (see the module docstring).
    `offload`: a `kinema.pipelines.memory` plan ("auto": the fastest that fits the device's free memory)."""
    path = Path(path)
    layout = detect_layout(path)
    readers = {"diffusers": _load_diffusers, "original": _load_original, "single": _load_single}
    if layout is None:
        raise ModelError(f"{path} is not a Wan checkpoint: expected {LAYOUTS_HELP}")
    dits, vae, text, defaults, kind, boundary, image = readers[layout](path, dtype)
    log.info("loaded a %s-layout Wan %s model from %s (DiT %s)", layout, kind, path, dits[0].config)
    device = torch.device(device)
    dits = [dit_to(d, torch.device("cpu"), dtype) for d in dits]  # placed on the device by the memory plan
    parts = (TextEncoder(text, device, dtype), vae.to(dtype), dits[0])
    name = path.stem if path.is_file() else path.name
    if len(dits) == 2:
        pipe = TwoExpertPipeline(*parts, dits[1], boundary, defaults, name, device)
    elif kind in IMAGE_KINDS:
        encoder = None if image is None else ImageEncoder(image, device, dtype)
        pipe = _checked(path, ImageToVideoPipeline, *parts, encoder, defaults, name, device)
    else:
        pipe = TextToVideoPipeline(*parts, defaults, name, device)
    plan_memory(pipe, device, offload)
    if getattr(pipe, "image_encoder", None) is not None:  # CLIP runs where the plan put the text encoder
        pipe.image_encoder.device = pipe.text_encoder.device
    return pipe


def dit_to(dit: DiT, device: torch.device, dtype: torch.dtype) -> DiT:
    """The DiT on `device` in `dtype`, except, for 16-bit dtypes, its affine LayerNorms and modulation tables, which
    stay in fp32 (diffusers' `_keep_in_fp32_modules` policy; kinema's norms compute in fp32)."""
    dit = dit.to(device, dtype)
    if dtype in (torch.float16, torch.bfloat16):
        for module in dit.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.float()
        for name, param in dit.named_parameters():
            if name.endswith("modulation"):
                param.data = param.data.float()
    return dit
