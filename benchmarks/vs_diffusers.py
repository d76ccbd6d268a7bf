"""kinema's DiT forward against diffusers' WanTransformer3DModel: same weights, same inputs, one process.

    python benchmarks/vs_diffusers.py [--repeats 10] [--threads 2] [--device cpu|cuda] [--dtype float32|bfloat16]
    python benchmarks/vs_diffusers.py --device cuda --dtype bfloat16 --wan13b   # Wan2.1-1.3B size, 480x832x81
    python benchmarks/vs_diffusers.py --compile     # both models through torch.compile (inductor, frozen weights)
    python benchmarks/vs_diffusers.py --no-onednn   # kinema's linear layers through F.linear, as diffusers' are

Runs alternate (kinema, diffusers, kinema, ...) after a warm-up; each row reports the median time, the time ratio
kinema / diffusers, the max relative difference of the outputs, peak memory (CUDA) and the achieved GFLOP/s of
each against two measured matmul peaks: `torch.mm` (the BLAS that `F.linear` calls, MKL in CPU wheels) and
oneDNN's (`kinema.dit.linear`, which kinema's CPU fp32 linear layers use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from kinema.convert.wan import convert_diffusers_dit
from kinema.dit import linear
from kinema.dit.model import DiT, DiTConfig

CONFIGS = {
    # name: (heads, head_dim, layers, ffn, text_dim, latent shape (C, F, H, W))
    "tiny (240 tokens, dim 64)": (2, 32, 2, 128, 64, (16, 5, 12, 16)),
    "1280 tokens, dim 512": (8, 64, 8, 2048, 512, (16, 5, 32, 32)),
}
WAN13B = ("Wan2.1-1.3B, 480x832x81 (32,760 tokens)", (12, 128, 30, 8960, 4096, (16, 21, 60, 104)))


def dit_flops(heads, head_dim, layers, ffn, text_len, tokens) -> float:
    """Forward FLOPs of the blocks (matmuls and attention), 2 per multiply-add."""
    d = heads * head_dim
    per_block = (4 * d * d + 2 * d * ffn) * tokens + 2 * d * d * (tokens + 2 * text_len)  # self proj, FFN, cross proj
    attn = 2 * tokens * tokens * d + 2 * tokens * text_len * d                         # QK^T and AV, self and cross
    return 2.0 * layers * (per_block + 2 * attn)


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, onednn: bool = False) -> float:
    """GFLOP/s of an n x n x n product: `torch.mm`, or (CPU fp32) oneDNN's linear op."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    product = (lambda: linear.onednn_product(a, b)) if onednn else (lambda: a @ b)
    for _ in range(2):
        product()
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        product()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def wan_text(tokens: int, text_dim: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """What a Wan pipeline feeds the DiT: a prompt's token states, zero-padded to 512 rows -> (1, 512, text_dim)."""
    text = torch.zeros(1, 512, text_dim, device=device, dtype=dtype)
    text[:, :tokens] = torch.randn(1, tokens, text_dim, device=device, dtype=dtype)
    return text


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(spec, device: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its advice on fp32 modules concerns from_pretrained, not this test

    heads, head_dim, layers, ffn, text_dim, (c, _, _, _) = spec
    torch.manual_seed(0)
    ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                in_channels=c, out_channels=c, text_dim=text_dim, freq_dim=256, ffn_dim=ffn,
                                num_layers=layers).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.02)
    ours = DiT(DiTConfig(in_channels=c, out_channels=c, dim=heads * head_dim, num_heads=heads, num_layers=layers,
                         ffn_dim=ffn, text_dim=text_dim)).eval()
    ours.load_state_dict(convert_diffusers_dit(ref.state_dict()))
    return ours.to(device, dtype), ref.to(device, dtype)


@torch.no_grad()
def bench(name, spec, args, peak) -> str:
    dtype = getattr(torch, args.dtype)
    ours, ref = build(spec, args.device, dtype)
    if args.compile:  # the same treatment for both; the warm-up below compiles them
        ours, ref = torch.compile(ours), torch.compile(ref)
    heads, head_dim, layers, ffn, text_dim, (c, f, h, w) = spec
    x = torch.randn(1, c, f, h, w, device=args.device, dtype=dtype)
    t = torch.tensor([500.0], device=args.device)
    text = wan_text(args.prompt_tokens, text_dim, args.device, dtype)
    runs = {"kinema": lambda: ours(x, t, text), "diffusers": lambda: ref(x, t, text, return_dict=False)[0]}
    outs = {k: fn() for k, fn in runs.items()}  # warm-up
    times, peaks = {k: [] for k in runs}, {}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(args.device)
            t0 = time.perf_counter()
            fn()
            _sync(args.device)
            times[k].append(time.perf_counter() - t0)
            if args.device.startswith("cuda"):
                peaks[k] = torch.cuda.max_memory_allocated() / 2**20
    med = {k: statistics.median(v) for k, v in times.items()}
    rel = ((outs["kinema"].float() - outs["diffusers"].float()).abs().max() / outs["diffusers"].float().abs().max())
    flops = dit_flops(heads, head_dim, layers, ffn, text.shape[1], f * (h // 2) * (w // 2))
    gf = {k: flops / v / 1e9 for k, v in med.items()}
    mem = " | ".join(f"{peaks[k]:.0f}" if k in peaks else "-" for k in runs)
    return (f"| {name} | {med['kinema'] * 1e3:.1f} | {med['diffusers'] * 1e3:.1f} | "
            f"{med['kinema'] / med['diffusers']:.2f} | {rel:.1e} | {gf['kinema']:.0f} | {gf['diffusers']:.0f} | "
            f"{peak} | {mem} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompt-tokens", type=int, default=24,
                   help="real (non-padding) text rows of the 512 the DiT gets; 512 = no padding")
    p.add_argument("--wan13b", action="store_true", help="only the Wan2.1-1.3B-size row (needs a GPU)")
    p.add_argument("--no-onednn", action="store_true", help="kinema's linear layers through F.linear (as diffusers')")
    p.add_argument("--compile", action="store_true",
                   help="run both models through torch.compile (inductor, weights frozen as constants)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    linear.set_onednn(not args.no_onednn)
    dtype = getattr(torch, args.dtype)
    peak = f"{matmul_peak(args.device, dtype):.0f}"
    if args.device == "cpu" and dtype == torch.float32 and linear.onednn_available():
        peak += f" / {matmul_peak(args.device, dtype, onednn=True):.0f}"
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, {args.threads} threads, median of {args.repeats}"
          f"{', both compiled' if args.compile else ''}"
          f"{', kinema without oneDNN' if args.no_onednn else ''}{load}\n")
    print("| config | kinema ms | diffusers ms | ratio | max rel diff | kinema GFLOP/s | diffusers GFLOP/s | "
          "matmul peak GFLOP/s (mm / oneDNN) | peak MiB kinema | peak MiB diffusers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, spec in ([WAN13B] if args.wan13b else CONFIGS.items()):
        print(bench(name, spec, args, peak), flush=True)


if __name__ == "__main__":
    main()
