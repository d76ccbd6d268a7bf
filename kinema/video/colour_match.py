"""Colour matching of generated frames to reference frames (against colour drift in long and extended videos).

`histogram_match(frames, reference, strength)`: uint8 frames (T, H, W, 3) whose channels are remapped, frame by
frame, so that each channel's distribution of values is the reference frames' (K, H', W', 3) pooled one (the "hm"
of colour-transfer tools). A value's quantile is taken at the middle of its tie group, so a flat region maps to one
value and stays flat. `strength` in [0, 1] blends the result with the input (0: unchanged).
"""

from __future__ import annotations

import numpy as np

LEVELS = 256


def _check(frames: np.ndarray, reference: np.ndarray, strength: float) -> None:
    for name, a in (("frames", frames), ("reference", reference)):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"{name} must be uint8 (T, H, W, 3), got {a.dtype} {a.shape}")
    if not 0 <= strength <= 1:
        raise ValueError(f"colour-match strength must be in [0, 1], got {strength}")


def _blend(frames: np.ndarray, matched: np.ndarray, strength: float) -> np.ndarray:
    out = frames + strength * (matched - frames.astype(np.float64))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def channel_maps(frame: np.ndarray, reference_sorted: np.ndarray) -> np.ndarray:
    """(3, 256) float: the value each 0-255 level of `frame` (H, W, 3) maps to, given the reference's values sorted
    per channel (3, N)."""
    n = reference_sorted.shape[1]
    maps = np.empty((3, LEVELS))
    for c in range(3):
        mass = np.bincount(frame[..., c].ravel(), minlength=LEVELS) / frame[..., c].size
        quantile = np.cumsum(mass) - mass / 2                                       # middle of each tie group
        maps[c] = np.interp(quantile * (n - 1), np.arange(n), reference_sorted[c])
    return maps


def histogram_match(frames: np.ndarray, reference: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Frames whose per-channel value distributions are the reference frames' (pooled), frame by frame."""
    _check(frames, reference, strength)
    return match_sorted(frames, sorted_values(reference), strength)


def sorted_values(reference: np.ndarray) -> np.ndarray:
    """(3, K * H * W) float: the reference frames' (K, H, W, 3) values, sorted per channel; computed once, it serves
    any number of `match_sorted` calls against the same reference."""
    return np.sort(reference.reshape(-1, 3).T.astype(np.float64), axis=1)


def match_sorted(frames: np.ndarray, reference_sorted: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """`histogram_match` against a reference given by its `sorted_values`."""
    if not 0 <= strength <= 1:
        raise ValueError(f"colour-match strength must be in [0, 1], got {strength}")
    out = np.empty(frames.shape, dtype=np.float64)
    for t, frame in enumerate(frames):
        maps = channel_maps(frame, reference_sorted)
        for c in range(3):
            out[t, ..., c] = maps[c][frame[..., c]]
    return _blend(frames, out, strength)
