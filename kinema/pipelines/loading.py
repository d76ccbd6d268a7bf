"""Finding, loading and saving models.

A kinema model folder holds `model.json` (the configs of the three components and the generation defaults),
`vae.safetensors` and `dit.safetensors`. Built-in models live in `kinema/models/<name>/`; `load_pipeline` takes
such a name or a path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from kinema.convert import state_dict_mismatch
from kinema.convert.torch_files import atomic_save_safetensors
from kinema.dit.model import DiT, DiTConfig
from kinema.pipelines.text_to_video import GenerationSettings, TextToVideoPipeline
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.vae.model import VAEConfig, VideoVAE

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "shapes"


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
        vae_cfg, dit_cfg = VAEConfig.from_dict(spec["vae"]), DiTConfig.from_dict(spec["dit"])
        defaults = GenerationSettings(**spec.get("defaults", {}))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelError(f"{path / 'model.json'} is not a valid kinema model description: {e}") from e
    vae, dit = VideoVAE(vae_cfg), DiT(dit_cfg)
    load_weights(vae, path / "vae.safetensors")
    load_weights(dit, path / "dit.safetensors")
    vae, dit = vae.to(device, dtype).eval(), dit.to(device, dtype).eval()
    return TextToVideoPipeline(TextEncoder(text_cfg, device, dtype), vae, dit, defaults, spec.get("name", path.name),
                               device)


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
               defaults: GenerationSettings, name: str, extra: dict | None = None) -> Path:
    """Write a kinema model folder (each file atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(vae.state_dict(), path / "vae.safetensors")
    atomic_save_safetensors(dit.state_dict(), path / "dit.safetensors")
    spec = {"format": "kinema", "name": name, "text_encoder": text_cfg.to_dict(), "vae": vae.config.to_dict(),
            "dit": dit.config.to_dict(), "defaults": defaults.to_dict(), **(extra or {})}
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".model.json.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f, indent=2)
    os.replace(tmp, path / "model.json")
    return path
