"""Converters from foreign checkpoint key layouts to kinema's parameter names."""

from __future__ import annotations

import re


def state_dict_mismatch(own: dict, state: dict) -> str | None:
    """Why `state` does not fit a model whose state dict is `own` (missing/unexpected keys, a shape), or None."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        return f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
    for k in own:
        if own[k].shape != state[k].shape:
            return f"shape mismatch for {k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
    return None


def rename_keys(state: dict, rename, what: str) -> dict:
    """`state` with every key passed through `rename` (key -> new key, or None when it does not belong);
    ValueError naming `what` the file is not, when any key does not belong."""
    out, unknown = {}, []
    for key, value in state.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"not a {what}: unexpected keys {sorted(unknown)[:5]}")
    return out


def first_rule(key: str, rules) -> str | None:
    """`key` rewritten by the first of `rules` ((regex, replacement) pairs) that matches it, or None."""
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None
