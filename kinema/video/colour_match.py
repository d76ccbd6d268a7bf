"""Colour matching of generated frames to reference frames (against colour drift in long and extended videos).

Two methods, each frame by frame against the reference frames (K, H', W', 3) pooled, for uint8 frames (T, H, W, 3);
`strength` in [0, 1] blends the result with the input (0: unchanged):

- "palette" (`palette_match`; the default here and for streams, `kinema.pipelines.stream.colour_anchored`; `kinema
  extend` keeps "histogram", which measured better on its continuations): one affine colour map per frame, fitted
  so that the frame's palette (the mean colours of k-means clusters of its flat pixels, seeded with the reference's
  clusters so that they correspond) lands on the reference's (`palette`, `fit_affine`). Cluster means do not depend
  on how much of the frame each colour covers, so an object that grows or shrinks does not read as a change of
  colour; and an affine map keeps every blend of two colours the same blend, so anti-aliased and blurred edges keep
  their coverage: the object's size, outline and position do not move. Directions of colour space the palette does
  not span stay as they are (the fit's ridge towards the identity).
- "histogram" (`histogram_match`): each channel remapped so that its distribution of values is the reference's
  (the "hm" of colour-transfer tools). A value's quantile is taken at the middle of its tie group, so a flat region
  maps to one value and stays flat. It confuses area with colour: when an object covers more of the frame than in
  the reference, part of it is mapped to the background's values (its edges change coverage, its colour moves;
  measured on 129-frame streams, docs/temporal.md). (Matching the colour mean and covariance, the "mkl" map, has
  the same fault: a growing object reads as a brighter one.)
"""

from __future__ import annotations

import numpy as np

LEVELS = 256
METHODS = ("palette", "histogram")
PALETTE_SIZE = 4  # "palette": colour clusters per reference
PALETTE_PIXELS = 1 << 16  # "palette": at most about this many flat pixels are clustered (every n-th beyond it)
RIDGE = 400.0  # "palette": pull of the affine fit towards the identity, per colour pair (0-255 units squared:
#                colour directions the palette spreads over by less than ~20 levels keep their gain)
MERGE_DISTANCE = 40.0  # "palette": reference clusters nearer than this (0-255, RGB distance) are one colour
FLAT_TOLERANCE = 6  # "palette": a pixel joins the palette when its 3x3 neighbourhood is within this of it (0-255)


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


class ColourReference:
    """The reference frames' statistics for `method` (sorted values, or a palette), computed once, to match any
    number of frames to."""

    def __init__(self, reference: np.ndarray, method: str = "palette"):
        _check(reference, reference, 1.0)
        if method not in METHODS:
            raise ValueError(f"colour-match method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.stats = sorted_values(reference) if method == "histogram" else palette(reference)

    def match(self, frames: np.ndarray, strength: float = 1.0) -> np.ndarray:
        _check(frames, frames, strength)
        if self.method == "histogram":
            return match_sorted(frames, self.stats, strength)
        out = np.empty(frames.shape, dtype=np.float64)
        for t, frame in enumerate(frames):
            own = palette(frame[None], self.stats)                                 # its colours, cluster by cluster
            kept = ~np.isnan(own).any(axis=1)
            out[t] = apply_affine(frame, fit_affine(own[kept], self.stats[kept]))
        return _blend(frames, out, strength)


def colour_match(frames: np.ndarray, reference: np.ndarray, strength: float = 1.0,
                 method: str = "palette") -> np.ndarray:
    """`frames` matched to `reference` with `method` ("palette" or "histogram"; see the module's docstring)."""
    return ColourReference(reference, method).match(frames, strength)


def palette_match(frames: np.ndarray, reference: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Frames recoloured, each by one affine colour map, so that their palette is the reference frames'."""
    return colour_match(frames, reference, strength, "palette")


def palette(frames: np.ndarray, start: np.ndarray | None = None, k: int = PALETTE_SIZE,
            iterations: int = 8) -> np.ndarray:
    """(n, 3) float: the mean colours of k clusters (k-means) of the flat pixels of frames (K, H, W, 3); `start`
    (k, 3) seeds the clusters (a reference's palette: cluster i then answers the reference's cluster i), otherwise
    they start at far-apart colours (`_farthest_points`), so that a small object gets its own cluster, and
    clusters nearer than MERGE_DISTANCE (shades of one colour) are merged (n <= k). Beyond PALETTE_PIXELS flat
    pixels, an even sample of them is clustered (cluster means need no more; a 720p frame would cost 20x). Seeded,
    n = len(start) and a cluster left empty is NaN."""
    x = np.concatenate([f[flat_pixels(f)] for f in frames])                        # (N, 3)
    x = x[:: max(1, len(x) // PALETTE_PIXELS)].astype(np.float64)                 # an even sample: large frames
    centres = np.array(_farthest_points(x, k) if start is None else start, dtype=np.float64)
    for _ in range(iterations):
        alive = ~np.isnan(centres).any(axis=1)
        d = ((x[:, None] - np.where(alive[:, None], centres, np.inf)[None]) ** 2).sum(-1)  # (N, k)
        label = d.argmin(axis=1)
        for i in range(len(centres)):
            centres[i] = x[label == i].mean(axis=0) if (label == i).any() else np.nan
    if start is None:
        counts = np.bincount(label, minlength=len(centres)).astype(np.float64)
        centres = _merged(centres[counts > 0], counts[counts > 0])
    return centres


def _merged(centres: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Clusters (n, 3) with pixel counts (n,), the nearest two merged (count-weighted) while nearer than
    MERGE_DISTANCE."""
    centres, counts = list(centres), list(counts)
    while len(centres) > 1:
        pairs = [(np.linalg.norm(centres[i] - centres[j]), i, j) for i in range(len(centres))
                 for j in range(i + 1, len(centres))]
        dist, i, j = min(pairs)
        if dist >= MERGE_DISTANCE:
            break
        total = counts[i] + counts[j]
        centres[i] = (centres[i] * counts[i] + centres[j] * counts[j]) / total
        counts[i] = total
        del centres[j], counts[j]
    return np.stack(centres)


def _farthest_points(x: np.ndarray, k: int) -> np.ndarray:
    """(k, 3): the mean colour, then k - 1 times the colour farthest from those chosen (deterministic)."""
    chosen = [x.mean(axis=0)]
    d = ((x - chosen[0]) ** 2).sum(-1)
    for _ in range(k - 1):
        chosen.append(x[d.argmax()])
        d = np.minimum(d, ((x - chosen[-1]) ** 2).sum(-1))
    return np.stack(chosen)


def fit_affine(source: np.ndarray, target: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """(4, 3) W minimising sum_i |[s_i, 1] W - t_i|^2 over colour pairs (n, 3) + ridge * n * |W - identity|^2
    (0-255 units): the affine colour map closest to the pairs; the ridge keeps directions the pairs do not span
    (two colours span one line of colour space) at the identity."""
    x = np.concatenate([source, np.ones((len(source), 1))], axis=1)
    prior = np.concatenate([np.eye(3), np.zeros((1, 3))])                          # (4, 3): x -> x
    lam = ridge * max(len(x), 1) * np.diag([1.0, 1.0, 1.0, 255.0 ** -2])           # the offset in 0-255 units
    return np.linalg.solve(x.T @ x + lam, x.T @ target + lam @ prior)


def flat_pixels(frame: np.ndarray, tolerance: float = FLAT_TOLERANCE) -> np.ndarray:
    """(H, W) bool: pixels whose 3x3 neighbourhood stays within `tolerance` (0-255, every channel) of them, i.e.
    not on an edge; all pixels where none is flat."""
    padded = np.pad(frame.astype(np.int16), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    spread = np.zeros((h, w), dtype=np.int16)
    for dy in range(3):
        for dx in range(3):
            diff = np.abs(padded[dy:dy + h, dx:dx + w] - frame.astype(np.int16)).max(axis=-1)
            spread = np.maximum(spread, diff)
    flat = spread <= tolerance
    return flat if flat.any() else np.ones((h, w), dtype=bool)


def apply_affine(frame: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(H, W, 3) float: [x, 1] W for every pixel x of frame (H, W, 3)."""
    return frame.astype(np.float64) @ w[:3] + w[3]
