"""Finding, loading and saving models.

A kinema model folder holds `model.json` (the configs of the three components and the generation defaults),
`vae.safetensors` and `dit.safetensors`; a two-expert model (Wan 2.2 A14B's design: the DiT denoises t >= boundary,
a low-noise expert the rest) adds `dit_2.safetensors`, its config and the boundary. Built-in models live in
`kinema/models/<name>/`; `load_pipeline` takes such a name or a path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from kinema.atomic import temp_beside
from kinema.convert import state_dict_mismatch
from kinema.convert.torch_files import atomic_save_safetensors
from kinema.dit.model import DiT, DiTConfig
from kinema.pipelines.text_to_video import GenerationSettings, TextToVideoPipeline
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.vae.model import VAEConfig, VideoVAE

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "shapes"
EXPERT_FILES = ("dit.safetensors", "dit_2.safetensors")  # the DiT (high-noise expert) and the low-noise expert


class ModelError(ValueError):
    """A model folder or file that cannot be loaded; the message names the file and the reason."""


def builtin_models() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "model.json").exists())


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    name = str(name_or_path)
    if (BUILTIN_DIR / name / "model.json").exists() and not Path(name).exists():
        return BUILTIN_DIR / name
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelError(f"model {name!r} is neither a built-in model ({', '.join(builtin_models())}) nor a path")
    return path


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return torch.device(device)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into `module`, strictly, with errors that name the file and the keys."""
    if not path.exists():
        raise ModelError(f"missing weights file {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from e
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise ModelError(f"{path} does not fit the model: {problem}")
    module.load_state_dict(state)


def _load_kinema(path: Path, device: torch.device, dtype: torch.dtype) -> TextToVideoPipeline:
    try:
        spec = json.loads((path / "model.json").read_text())
        text_cfg = TextEncoderConfig.from_dict(spec["text_encoder"])
        vae_cfg = VAEConfig.from_dict(spec["vae"])
        dit_cfgs = [DiTConfig.from_dict(spec[k]) for k in ("dit", "dit_2") if k in spec]
        boundary = float(spec["boundary"]) if len(dit_cfgs) == 2 else None
        defaults = GenerationSettings(**spec.get("defaults", {}))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path / 'model.json'} is not a valid kinema model description: {e}") from e
    vae, dits = VideoVAE(vae_cfg), [DiT(cfg) for cfg in dit_cfgs]
    load_weights(vae, path / "vae.safetensors")
    for dit, file in zip(dits, EXPERT_FILES):
        load_weights(dit, path / file)
    vae, dits = vae.to(device, dtype).eval(), [dit.to(device, dtype).eval() for dit in dits]
    parts = (TextEncoder(text_cfg, device, dtype), vae, dits[0])
    name = spec.get("name", path.name)
    if boundary is None:
        return TextToVideoPipeline(*parts, defaults, name, device)
    from kinema.pipelines.two_experts import TwoExpertPipeline

    return TwoExpertPipeline(*parts, dits[1], boundary, defaults, name, device)


def load_pipeline(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, offload: str = "auto") -> TextToVideoPipeline:
    """A ready pipeline (with .text_encoder, .vae, .dit) from a built-in model name or a model folder.
    `offload`: "auto", "none", "model" or "sequential" (`kinema.pipelines.memory`; kinema-format models, which are
    small, are only offloaded when asked)."""
    from kinema.pipelines.memory import OFFLOAD_MODES, MemoryPlan, apply_plan

    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    path = resolve_model_path(name_or_path)
    dev = pick_device(str(device))
    pipe = None
    if (path / "model.json").exists():
        pipe = _load_kinema(path, dev, dtype)
        if offload not in ("auto", "none"):
            apply_plan(pipe, MemoryPlan(offload, text_on_cpu=False, reason="asked for"), dev)
    else:
        from kinema.pipelines import wan  # Wan checkpoints: diffusers / original folders, single DiT files

        if wan.detect_layout(path) is not None:
            pipe = wan.load_wan_pipeline(path, dev, dtype, offload)
    if pipe is not None:
        builtin = path.parent == BUILTIN_DIR
        pipe.source = path.name if builtin else str(path.resolve())  # what load_pipeline needs to load it again
        return pipe
    raise ModelError(f"{path} is not a model folder or file this version understands (no model.json; nor a Wan checkpoint: "
                     f"{wan.LAYOUTS_HELP})")



def save_model(path: str | os.PathLike, text_cfg: TextEncoderConfig, vae: VideoVAE, dit: DiT,
               defaults: GenerationSettings, name: str, extra: dict | None = None, dit_2: DiT | None = None,
               boundary: float | None = None, dit_dtype: torch.dtype | None = None) -> Path:
    """Write a kinema model folder (each file atomically). `dit_2` and `boundary`: a two-expert model (`dit` for
    t >= boundary, `dit_2` below); `dit_dtype`: store the DiT weights in this dtype (e.g. float16, half the bytes;
    they load back into the pipeline's dtype)."""
    dits = [dit] if dit_2 is None else [dit, dit_2]
    if (dit_2 is None) != (boundary is None):
        raise ValueError("a two-expert model needs both dit_2 and boundary")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(vae.state_dict(), path / "vae.safetensors")
    for d, file in zip(dits, EXPERT_FILES):
        state = d.state_dict() if dit_dtype is None else {k: v.to(dit_dtype) for k, v in d.state_dict().items()}
        atomic_save_safetensors(state, path / file)
    experts = {"dit_2": dit_2.config.to_dict(), "boundary": float(boundary)} if dit_2 is not None else {}
    spec = {"format": "kinema", "name": name, "text_encoder": text_cfg.to_dict(), "vae": vae.config.to_dict(),
            "dit": dit.config.to_dict(), **experts, "defaults": defaults.to_dict(), **(extra or {})}
    fd, tmp = temp_beside(path / "model.json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f, indent=2)
    os.replace(tmp, path / "model.json")
    for stale in EXPERT_FILES[len(dits):]:  # a one-expert model written over a two-expert folder
        (path / stale).unlink(missing_ok=True)
    return path


def join_experts(high: str | os.PathLike, low: str | os.PathLike, boundary: float, out: str | os.PathLike,
                 dit_dtype: torch.dtype | None = None, name: str | None = None,
                 guidance_2: float | None = None) -> Path:
    """Write a two-expert model: `high`'s text encoder, VAE, defaults and DiT (for t >= boundary) with `low`'s DiT
    (its low-noise expert if it has two) below, guided with `guidance_2` by default (None: as the high one). Both
    models must share the VAE, whose latents the experts denoise."""
    if not 0.0 < boundary < 1.0:
        raise ValueError(f"the boundary must be strictly between 0 and 1, got {boundary}")
    a, b = load_pipeline(high), load_pipeline(low)
    same_vae = a.vae.config == b.vae.config and all(
        torch.equal(x, y) for x, y in zip(a.vae.state_dict().values(), b.vae.state_dict().values()))
    if not same_vae:
        raise ValueError(f"{low} and {high} do not share the VAE: their DiTs denoise different latents")
    from kinema.pipelines.two_experts import TwoExpertPipeline

    defaults = a.defaults if guidance_2 is None else a.settings(guidance_2=guidance_2)
    pair = TwoExpertPipeline(a.text_encoder, a.vae, a.dit, b.experts[-1], boundary, defaults)  # checks the latents
    return save_model(out, a.text_encoder.config, a.vae, pair.dit, defaults, name or Path(out).name,
                      dit_2=pair.dit_2, boundary=boundary, dit_dtype=dit_dtype)
