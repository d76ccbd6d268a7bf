"""nn.Linear whose CPU fp32 inference runs on oneDNN's GEMM instead of the BLAS that `F.linear` calls.

PyTorch's CPU wheels send fp32 `F.linear` to MKL's sgemm, and MKL picks its AVX2 kernels on AMD CPUs even where the
CPU has AVX-512; oneDNN (shipped in the same wheel, the library torch.compile's CPU backend calls for linear layers)
picks the CPU's widest kernels. On the AMD EPYC (Zen 5, AVX-512) that runs this repository's benchmarks, a
(2560, 512) x (512, 512) linear takes 15.4 ms through `F.linear` and 5.1 ms through oneDNN with one thread
(docs/performance.md). The result is the same fp32 product up to summation order (max relative difference ~1e-6).

Used only where it helps and is exact to use: CPU, fp32, no autograd graph to record (inference or a frozen
layer), at least `MIN_ROWS` rows (below that oneDNN's call overhead outweighs the product). Everywhere else, and
when `set_onednn(False)` was called, it is `F.linear`. Parameter names and state dicts are nn.Linear's.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 128  # fewer rows (tokens x batch) than this: F.linear (oneDNN's per-call overhead is ~10 us)
_enabled = True


def set_onednn(enabled: bool) -> None:
    """Turn the oneDNN path on or off for every Linear (benchmarks compare the two)."""
    global _enabled
    _enabled = enabled


@functools.cache
def onednn_available() -> bool:
    """Whether this torch build has the oneDNN linear op (CPU wheels since torch 2.0)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return (_enabled and not needs_grad and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.numel() >= MIN_ROWS * x.shape[-1] and onednn_available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN where `uses_onednn` says so. x (..., in) -> (..., out)."""
    if uses_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [None], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear computed by `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
