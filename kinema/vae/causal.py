"""Causal building blocks of the video VAE, and the explicit cache that threads them through chunks.

Every temporal operation only looks at the current and past frames. A video is processed as a sequence of chunks
(the first frame alone, then groups of frames); each causal layer keeps the last frames it saw in a `CausalCache`,
so processing chunk by chunk gives exactly the result of processing the whole clip, with memory that does not grow
with the clip's length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CACHE_FRAMES = 2  # a kernel-3 causal conv needs the previous 2 frames


class CausalCache:
    """The past frames each causal layer needs for the next chunk, keyed by layer.

    A fresh cache means "no past": the first chunk sees zero padding, as the whole-clip computation does.
    """

    def __init__(self):
        self._state: dict[int, torch.Tensor | None] = {}

    def seen(self, layer: nn.Module) -> bool:
        return id(layer) in self._state

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._state.get(id(layer))

    def put(self, layer: nn.Module, frames: torch.Tensor | None) -> None:
        self._state[id(layer)] = frames

    def __len__(self) -> int:
        return len(self._state)


def _keep_last(past: torch.Tensor | None, x: torch.Tensor, n: int = CACHE_FRAMES) -> torch.Tensor:
    """The last `n` frames of past ++ x (fewer only if fewer exist)."""
    if x.shape[2] >= n or past is None:
        return x[:, :, -n:].detach()
    return torch.cat([past, x], dim=2)[:, :, -n:].detach()


class CausalConv3d(nn.Conv3d):
    """A Conv3d padded only on the past side in time (zeros before the first frame, cached frames after)."""

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=0)
        k = self.kernel_size
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad = 2 * p[0]  # all temporal padding goes in front
        self.space_pad = (p[2], p[2], p[1], p[1])
        assert k[0] - 1 <= CACHE_FRAMES or self.time_pad == 0

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        past = cache.get(self) if cache is not None else None
        if cache is not None and self.time_pad:
            cache.put(self, _keep_last(past, x))
        pad = self.time_pad
        if past is not None and pad:
            past = past[:, :, -pad:]
            x = torch.cat([past.to(x.dtype), x], dim=2)
            pad -= past.shape[2]
        x = F.pad(x, self.space_pad + (pad, 0))
        return super().forward(x)


class FactorisedCausalConv(nn.Module):
    """(2+1)D causal convolution: a per-frame k×k spatial conv, then a causal k-tap temporal conv.

    About 3x cheaper than a full k×k×k conv at equal width; the CPU-trainable VAE configs use it.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.spatial = CausalConv3d(in_dim, out_dim, (1, kernel, kernel), padding=(0, pad, pad))
        self.temporal = CausalConv3d(out_dim, out_dim, (kernel, 1, 1), padding=(pad, 0, 0))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return self.temporal(self.spatial(x), cache)


def conv3x3(in_dim: int, out_dim: int, mode: str) -> nn.Module:
    """The VAE's k=3 causal conv: full 3D (Wan) or factorised (2+1)D."""
    if mode == "3d":
        return CausalConv3d(in_dim, out_dim, 3, padding=1)
    if mode == "2+1d":
        return FactorisedCausalConv(in_dim, out_dim, 3)
    raise ValueError(f"unknown conv mode {mode!r}")


class RMSNorm(nn.Module):
    """Wan's channel RMS norm: x / ||x||_channels * sqrt(C) * gamma, per position (no mixing across time)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma
