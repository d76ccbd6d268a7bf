"""Loading Wan 2.1 text-to-video checkpoints (z16 VAE, 16-channel DiT) as a kinema pipeline.

`kinema.load_pipeline(path)` / `kinema generate --model PATH` recognise three layouts:

1. diffusers folder (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers): `model_index.json` (WanPipeline), `transformer/`
   (config.json + diffusion_pytorch_model*.safetensors, sharded with a `.safetensors.index.json` or not), `vae/`
   (AutoencoderKLWan), `text_encoder/` (transformers UMT5EncoderModel), `tokenizer/`, `scheduler/`.
2. original release folder (e.g. Wan-AI/Wan2.1-T2V-1.3B): `config.json` (WanModel fields), the DiT
   `diffusion_pytorch_model*.safetensors` (original key names, which are kinema's), `Wan2.1_VAE.pth`,
   `models_t5_umt5-xxl-enc-bf16.pth` and the tokenizer folder `google/umt5-xxl/`.
3. a single DiT file `FILE.safetensors` with original key names (ComfyUI's `model.diffusion_model.` prefix is
   stripped; a file with diffusers' names is converted). Its config comes from `FILE.json` (WanModel config.json
   fields) next to it when present, else from the tensor shapes with Wan's head dim 128.

Companions (2 and 3 look in the checkpoint's folder, first match wins):
- VAE: `vae/` (diffusers folder), `Wan2.1_VAE.safetensors` or `wan_2.1_vae.safetensors` (original key names,
  e.g. ComfyUI's), `Wan2.1_VAE.pth`.
- text encoder: `text_encoder/` (a transformers umT5 folder), else `models_t5_umt5-xxl-enc-bf16.pth` (converted by
  `kinema.convert.wan_t5`); tokenizer: `tokenizer/`, `google/umt5-xxl/`, or the `text_encoder/` folder itself.
`.pth` files need torch >= 2.10 (see `kinema.convert.torch_files`).

Latent normalisation. Sampling runs in the *normalised* latent space z_n = (z - mean) / std of the VAE config. In
diffusers' WanPipeline the initial noise goes to the transformer as it is, the scheduler steps in that space, and only
before decoding does it compute z = z_n / (1 / std) + mean; `output_type="latent"` returns z_n. kinema's
`VideoVAE.decode` takes z_n and applies z_n * std + mean itself. So the same noise gives the same trajectory, and
`TextToVideoPipeline.denoise` returns what diffusers returns with `output_type="latent"`.

Defaults: UniPC, 50 steps, guidance 5, 81 frames at 16 fps, 480x832. diffusers folders take the scheduler's grid
and shift ("diffusers" schedule, flow_shift) and an empty negative prompt (diffusers' defaults); the other layouts
take the original release's grid ("wan" schedule), shift 5 and its Chinese negative prompt (Wan's generate.py).
Flags override all of these.
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
from kinema.convert.wan_checkpoints import (convert_original_vae, dit_config_from_diffusers, dit_config_from_state,
                                            dit_config_from_wan, strip_comfy_prefix, vae_config_from_state)
from kinema.dit.model import DiT, DiTConfig
from kinema.pipelines.loading import ModelError
from kinema.pipelines.text_to_video import GenerationSettings, TextToVideoPipeline
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.vae.model import VideoVAE

log = logging.getLogger(__name__)

LAYOUTS_HELP = ("a diffusers folder with model_index.json, an original Wan folder with config.json, or a DiT "
                ".safetensors file")
DIT_FILES = "diffusion_pytorch_model*.safetensors"
T5_PTH = "models_t5_umt5-xxl-enc-bf16.pth"
TEXT_LEN = 512
# wan/configs/shared_config.py `sample_neg_prompt`: the original release's default negative prompt
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                       "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
T2V_DEFAULTS = GenerationSettings(frames=81, height=480, width=832, fps=16.0, steps=50, guidance=5.0, shift=5.0,
                                  sampler="unipc", schedule="wan", negative_prompt=WAN_NEGATIVE_PROMPT)


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
    if _is_wan_model_config(path / "config.json"):
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


def _check_fit(config: DiTConfig, vae: VideoVAE, source: Path) -> None:
    z = vae.config.z_dim
    if config.in_channels != z or config.out_channels != z:
        raise ModelError(f"{source}: the DiT takes {config.in_channels} and gives {config.out_channels} latent "
                         f"channels but the VAE has {z} (only text-to-video models with the Wan 2.1 VAE are supported)")


# ---- VAE ------------------------------------------------------------------------------------------------------------

VAE_FILES = ("Wan2.1_VAE.safetensors", "wan_2.1_vae.safetensors", "Wan2.1_VAE.pth")


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
    """kinema's VAE from a diffusers `vae/` folder (AutoencoderKLWan, Wan 2.1 layout)."""
    config = _checked(folder / "config.json", vae_config_from_diffusers, _read_json(folder / "config.json"))
    files = weight_files(folder)
    state = _checked(_source(files), convert_diffusers_vae, _checked(None, torch_files.read_safetensors, list(files)))
    return _build_vae(config, state, _source(files))


def load_original_vae(path: Path) -> VideoVAE:
    """kinema's VAE from the original release's `Wan2.1_VAE.pth` (or a safetensors file with its key names)."""
    state = _checked(path, convert_original_vae, _read_weights(path))
    return _build_vae(_checked(path, vae_config_from_state, state), state, str(path))


def find_vae(folder: Path) -> VideoVAE:
    if (folder / "vae" / "config.json").is_file():
        return load_diffusers_vae_folder(folder / "vae")
    for name in VAE_FILES:
        if (folder / name).is_file():
            return load_original_vae(folder / name)
    raise ModelError(f"no VAE for the Wan model in {folder}: looked for vae/ (diffusers) and {', '.join(VAE_FILES)}")


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


# ---- defaults -------------------------------------------------------------------------------------------------------

_UNIPC_DEFAULTS = {"solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
                   "final_sigmas_type": "zero", "disable_corrector": [], "num_train_timesteps": 1000}


def diffusers_defaults(scheduler_config: Path) -> GenerationSettings:
    """T2V defaults with diffusers' empty negative prompt and its scheduler's grid and shift."""
    base = replace(T2V_DEFAULTS, negative_prompt="")
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

def _load_diffusers(path: Path, dtype: torch.dtype):
    index_path = path / "model_index.json"
    index = _read_json(index_path)
    if index.get("_class_name") != "WanPipeline":
        raise ModelError(f"{index_path}: pipeline {index.get('_class_name')!r} is not supported (WanPipeline, "
                         "text-to-video, only)")
    if (index.get("transformer_2") or [None])[0] is not None or index.get("boundary_ratio") is not None:
        raise ModelError(f"{index_path}: two-expert Wan 2.2 A14B checkpoints are not supported yet")
    if index.get("expand_timesteps"):
        raise ModelError(f"{index_path}: Wan 2.2 TI2V (expand_timesteps) checkpoints are not supported yet")
    folder = path / "transformer"
    config = _checked(folder / "config.json", dit_config_from_diffusers, _read_json(folder / "config.json"))
    files = weight_files(folder)
    vae = find_vae(path)
    _check_fit(config, vae, folder / "config.json")
    text = find_text_encoder(path, config.text_dim)
    dit = build_dit(config, read_dit_state(files, dtype, diffusers_names=True), _source(files))
    return dit, vae, text, diffusers_defaults(path / "scheduler" / "scheduler_config.json")


def _load_original(path: Path, dtype: torch.dtype):
    config = _checked(path / "config.json", dit_config_from_wan, _read_json(path / "config.json"))
    files = weight_files(path)
    vae = find_vae(path)
    _check_fit(config, vae, path / "config.json")
    text = find_text_encoder(path, config.text_dim)
    return build_dit(config, read_dit_state(files, dtype), _source(files)), vae, text, T2V_DEFAULTS


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
    vae = find_vae(path.parent)
    _check_fit(config, vae, path)
    text = find_text_encoder(path.parent, config.text_dim)
    dit = build_dit(config, read_dit_state((path,), dtype, diffusers_names, prefix), str(path))
    return dit, vae, text, T2V_DEFAULTS


def load_wan_pipeline(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> TextToVideoPipeline:
    """A text-to-video pipeline from a Wan checkpoint in any of the three layouts (see the module docstring)."""
    path = Path(path)
    layout = detect_layout(path)
    readers = {"diffusers": _load_diffusers, "original": _load_original, "single": _load_single}
    if layout is None:
        raise ModelError(f"{path} is not a Wan checkpoint: expected {LAYOUTS_HELP}")
    dit, vae, text, defaults = readers[layout](path, dtype)
    log.info("loaded a %s-layout Wan model from %s (DiT %s)", layout, path, dit.config)
    device = torch.device(device)
    return TextToVideoPipeline(TextEncoder(text, device, dtype), vae.to(device, dtype), dit_to(dit, device, dtype),
                               defaults, path.stem if path.is_file() else path.name, device)


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
