"""Reading checkpoint files safely, with errors (ValueError) that name the file, and writing them atomically.

`.safetensors` files are read tensor by tensor (cast to the wanted dtype as they come, so a bf16 checkpoint loaded in
bf16 never exists in fp32). `.pth` files are pickles: they are only opened with
`torch.load(path, weights_only=True, map_location="cpu")` and only on torch >= 2.10, since `weights_only` loading
could still run code before 2.6 (CVE-2025-32434) and before 2.10 (CVE-2026-24747).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from kinema.atomic import atomic_path

log = logging.getLogger(__name__)

MIN_TORCH_FOR_PTH = "2.10"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def torch_can_read_pth(version: str | None = None) -> bool:
    return torch.torch_version.TorchVersion(version or torch.__version__) >= MIN_TORCH_FOR_PTH


def read_pth(path: str | Path, torch_version: str | None = None) -> dict:
    """The tensors of a .pth state dict (memory-mapped when possible); refused on torch < 2.10."""
    path = Path(path)
    if not torch_can_read_pth(torch_version):
        raise ValueError(f"refusing to open {path}: .pth files are pickles and torch "
                         f"{torch_version or torch.__version__} < {MIN_TORCH_FOR_PTH} cannot load them safely "
                         "(CVE-2025-32434, CVE-2026-24747); upgrade torch or use a safetensors checkpoint")
    if not path.is_file():
        raise ValueError(f"missing weights file {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # legacy (non-zip) files cannot be mapped; damaged ones get the plain loader's message
        state = _read_pth_unmapped(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def build_from_pth(path: str | Path, build, *args):
    """`build(state_dict, *args)` on a `.pth` read by `read_pth`; a ValueError from it names the file."""
    path = Path(path)
    try:
        return build(read_pth(path), *args)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _read_pth_unmapped(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # pickle errors, truncated zip archives, refused globals
        raise ValueError(f"cannot read {path} (truncated or not a torch state dict?): {_one_line(e)}") from e


def read_safetensors(files: list[Path], dtype: torch.dtype | None = None, strip_prefix: str = "") -> dict:
    """The tensors of one or more (sharded) safetensors files, floating ones cast to `dtype`; keys lose
    `strip_prefix` where they have it."""
    from safetensors import safe_open

    state = {}
    for f in files:
        if not Path(f).is_file():
            raise ValueError(f"missing weights file {f}")
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    t = fh.get_tensor(key)
                    if dtype is not None and t.is_floating_point():
                        t = t.to(dtype)
                    state[key.removeprefix(strip_prefix) if strip_prefix else key] = t
        except Exception as e:  # SafetensorError, OSError, truncated headers or data
            raise ValueError(f"cannot read {f}: {_one_line(e)}") from e
    return state


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors file's header (no data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as e:  # pickle errors, truncated zip archives, refused globals
        raise ValueError(f"cannot read {path} (truncated or not a torch state dict?): {_one_line(e)}") from e


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    """safetensors to a temp file in the same folder, then rename: a reader never sees a partial file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    return Path(path)
