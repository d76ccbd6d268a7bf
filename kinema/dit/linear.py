"""nn.Linear whose CPU fp32 products run on oneDNN's GEMM instead of the BLAS that `F.linear` calls.

PyTorch's CPU wheels send fp32 `F.linear` to MKL's sgemm, and MKL picks its AVX2 kernels on AMD CPUs even where the
CPU has AVX-512; oneDNN (shipped in the same wheel, the library torch.compile's CPU backend calls for linear layers)
picks the CPU's widest kernels. On the AMD EPYC (Zen 5, AVX-512) that runs this repository's benchmarks, a
(2560, 512) x (512, 512) linear takes 15.4 ms through `F.linear` and 5.1 ms through oneDNN with one thread
(docs/performance.md). The result is the same fp32 product up to summation order (max relative difference ~1e-6).

Used where it helps: CPU, fp32, at least `MIN_ROWS` rows (below that oneDNN's call overhead outweighs the
product). Training takes it too: `OneDNNLinear` computes the two backward products (dx = dy W, dW = dyᵀ x) on
oneDNN as well. Everywhere else, and when `set_onednn(False)` was called, it is `F.linear`. Parameter names and
state dicts are nn.Linear's.
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
    """Whether `linear(x, weight)` goes to oneDNN: on, CPU, fp32, at least MIN_ROWS rows, the op present."""
    return (_enabled and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.numel() >= MIN_ROWS * x.shape[-1] and onednn_available())


def onednn_product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a (..., K) @ b (N, K)ᵀ + bias -> (..., N), on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [None], "")


class OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b with all three products (forward, dx, dW) on oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # (rows, out)
        dx = onednn_product(dy2, weight.t().contiguous()).view_as(x) if ctx.needs_input_grad[0] else None
        dw = onednn_product(dy2.t().contiguous(), x.reshape(-1, x.shape[-1]).t().contiguous()) \
            if ctx.needs_input_grad[1] else None  # (out, rows) @ (rows, in)
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN where `uses_onednn` says so. x (..., in) -> (..., out)."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (x, weight, bias)):
        return OneDNNLinear.apply(x, weight, bias)
    return onednn_product(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear computed by `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
