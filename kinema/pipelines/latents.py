"""Latents on disk: saved before VAE decoding, so a decode that fails (out of memory) can be retried alone.

A `.safetensors` file with one tensor `latents` (B, C, T', H', W') (normalised) and the run's settings as JSON
metadata (`kinema_run`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kinema.atomic import atomic_path


def save_latents(path: str | Path, latents: torch.Tensor, run: dict) -> Path:
    with atomic_path(path) as tmp:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, tmp,
                  metadata={"kinema_run": json.dumps(run, default=str)})
    return Path(path)


def load_latents(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(latents, run settings); ValueError naming the file if it is not a kinema latents file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "latents" not in f.keys():
                raise ValueError(f"{path} holds no 'latents' tensor")
            latents = f.get_tensor("latents")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read latents {path}: {e}") from None
    if latents.ndim != 5:
        raise ValueError(f"{path}: latents must be (B, C, T, H, W), got {tuple(latents.shape)}")
    return latents, json.loads(meta.get("kinema_run", "{}"))
