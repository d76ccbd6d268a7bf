"""Start a DiT of a finer patch size from a trained one (e.g. the shapes DiT's (1, 2, 2) patches -> (1, 1, 1)).

Only the two layers whose shapes depend on the patch change; every block is kept as it is:
- patch embedding: each new kernel is the sum of the old kernel's taps that fall on the same offset of the new,
  smaller patch, so a latent that is constant over an old patch embeds to the same token as before;
- head: each new output (offset, channel) is the mean of the old outputs at the offsets it covers.
The result is a starting point for fine-tuning, not an equivalent model (each token now sees less of the latent).
"""

from __future__ import annotations

import torch
from einops import reduce


def patch_ratios(old: tuple[int, int, int], new: tuple[int, int, int]) -> tuple[int, int, int]:
    """How many new patches fit in an old one along (t, h, w); the new patch must divide the old."""
    if any(o % n for o, n in zip(old, new)):
        raise ValueError(f"patch {tuple(new)} does not divide patch {tuple(old)}: only a finer patch can be derived")
    return tuple(o // n for o, n in zip(old, new))


def repatch_state(state: dict[str, torch.Tensor], old: tuple[int, int, int], new: tuple[int, int, int],
                  out_channels: int) -> dict[str, torch.Tensor]:
    """`state` (a DiT state dict of patch `old`) with its patch embedding and head rebuilt for patch `new`."""
    (kt, kh, kw), (nt, nh, nw) = patch_ratios(old, new), new
    sizes = dict(i=kt, j=nt, k=kh, l=nh, m=kw, n=nw)
    out = dict(state)
    # (D, C, pt, ph, pw): an old tap at offset p = i * nt + j lands on offset j of new patch i
    out["patch_embedding.weight"] = reduce(state["patch_embedding.weight"],
                                           "d c (i j) (k l) (m n) -> d c j l n", "sum", **sizes)
    # head rows are ordered (pt ph pw c), the channel fastest (the unpatchify pattern)
    out["head.head.weight"] = reduce(state["head.head.weight"], "(i j k l m n c) d -> (j l n c) d", "mean",
                                     c=out_channels, **sizes)
    out["head.head.bias"] = reduce(state["head.head.bias"], "(i j k l m n c) -> (j l n c)", "mean",
                                   c=out_channels, **sizes)
    return out
