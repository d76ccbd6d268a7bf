"""Converters from foreign checkpoint key layouts to kinema's parameter names."""

from __future__ import annotations


def state_dict_mismatch(own: dict, state: dict) -> str | None:
    """Why `state` does not fit a model whose state dict is `own` (missing/unexpected keys, a shape), or None."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        return f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
    for k in own:
        if own[k].shape != state[k].shape:
            return f"shape mismatch for {k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
    return None
