"""Start a deeper DiT from a trained one (e.g. a 10-block low-noise expert from the 6-block shapes DiT).

New blocks are copies of their neighbours with the three layers that write into the residual stream (self-attention
output, cross-attention output, last FFN layer) zeroed, so each new block adds nothing and the deeper model computes
exactly what the trained one does; fine-tuning then grows them from there (the zero-initialised output layers get
gradients from the first step, the rest once those are non-zero).
"""

from __future__ import annotations

import torch

# the layers of a block whose output is added to the residual stream
RESIDUAL_WRITERS = ("self_attn.o.", "cross_attn.o.", "ffn.2.")


def block_order(old: int, new: int) -> list[int]:
    """For each of `new` blocks, the old block it copies: the extra copies spread evenly over the middle blocks
    (never the first or the last, which read the patch tokens and feed the head)."""
    if new < old:
        raise ValueError(f"cannot deepen {old} blocks to {new}: only adding blocks is supported")
    extra, middle = new - old, list(range(1, old - 1)) or list(range(old))
    dup = [middle[round(i * len(middle) / extra) % len(middle)] for i in range(extra)] if extra else []
    return [b for i in range(old) for b in [i] * (1 + dup.count(i))]


def deepen_state(state: dict[str, torch.Tensor], old: int, new: int) -> dict[str, torch.Tensor]:
    """`state` (a DiT state dict with `old` blocks) with `new` blocks; repeated blocks after the first copy add zero."""
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    order = block_order(old, new)
    for i, src in enumerate(order):
        fresh = i > 0 and order[i - 1] == src               # a copy, not the original
        prefix = f"blocks.{src}."
        for k, v in state.items():
            if k.startswith(prefix):
                name = k[len(prefix):]
                zero = fresh and name.startswith(RESIDUAL_WRITERS)
                out[f"blocks.{i}.{name}"] = torch.zeros_like(v) if zero else v.clone()
    return out
