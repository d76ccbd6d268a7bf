"""A detector for the "shapes" world: reads a (possibly imperfect) video and says what it shows.

Written from `shared/spec/shapes.md` alone: one solid object on a uniform background. Per frame it estimates the
background from the border, segments the object as the most contrasting connected blob, and measures its colour,
soft bounding box, fill ratio and vertical mass offset; per clip it votes the colour, shape, background and motion.
Generated videos are tolerated: blur, noise, colour shifts, flicker and a second fainter blob.

    j = judge_clip(frames)        # frames: (T, H, W, 3) uint8
    j.colour, j.shape, j.motion, j.background
    motion_matches("bounce", j.motion)
    consistency(j, frames)        # temporal-consistency figures
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kinema.data.shapes import BACKGROUNDS, COLOURS

# Colour distances are Euclidean in 0-255 sRGB. The weakest object/background contrast of the vocabulary is ~100
# (purple on gray), pixel noise of std 6 per channel gives distances of ~10, so 36 (about 6 sigma) separates them.
_FLOOR = 36.0
_MIN_CONTRAST = 40.0     # a blob fainter than this is a ghost, not the object
_CORE_MIN = 3            # fewest pixels in the eroded core before falling back to the whole mask
_BLEND_MIN = 0.7         # blur / mixing can pull the core colour up to 30 % towards the background
_MAX_COLOUR_DIST = 60.0  # closest vocabulary pair (yellow/orange) is 71 apart
_MAX_BG_DIST = 80.0      # backgrounds are >= 200 apart
_MIN_FOUND = 0.5         # clip-level object attributes need the object in at least half of the frames
# 4-connectivity within a frame (more robust to noise than 8), never across time.
_SPATIAL = np.zeros((3, 3, 3), bool)
_SPATIAL[1] = ndimage.generate_binary_structure(2, 1)
_ONES3 = np.ones(3, np.float32)


@dataclass(frozen=True, eq=False)
class Judgement:
    """What a clip shows; per-frame arrays have T rows, NaN (or False) where the object was not found."""

    colour: str | None
    shape: str | None
    motion: str | None
    background: str | None
    found: np.ndarray           # (T,) bool
    centres: np.ndarray         # (T, 2) float (x, y) pixels: centre of the object's bounding square
    sizes: np.ndarray           # (T,) float: side of the bounding square in pixels
    object_rgb: np.ndarray      # (T, 3) float: colour of the object's core
    background_rgb: np.ndarray  # (T, 3) float
    inside: np.ndarray          # (T,) bool: object found and not cut by the frame border
    masks: np.ndarray           # (T, H, W) bool: the object's pixels (half-contrast threshold)


def judge_clip(frames: np.ndarray, extra_colours: dict[str, tuple[int, int, int]] | None = None) -> Judgement:
    """Judge a (T, H, W, 3) uint8 clip. `extra_colours` (name -> RGB) are colours the judge may also answer,
    beyond the spec's vocabulary (e.g. kinema.data.shapes.EXTRA_COLOURS for a LoRA taught an unseen colour)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    f = frames.astype(np.float32)
    t_len, height, width = f.shape[:3]
    border = _border(f)
    bg = np.median(border, axis=1)  # robust to an object touching the edge
    # Per-frame pixel noise (std per channel, from the border's median absolute deviation).
    noise = 1.4826 * np.sqrt((np.median(np.abs(border - bg[:, None]), axis=1) ** 2).mean(axis=1))
    diff = f - bg[:, None, None]
    # (matmul over the 3 channels is much faster than a strided sum or einsum)
    masks = _segment(np.sqrt((diff * diff) @ _ONES3), max(4.0, 0.002 * height * width))
    # Eroded core: anti-aliased / blurred edges are background-tinted; tiny objects fall back to the whole mask.
    core = _erode(masks)
    small = core.sum(axis=(1, 2)) < _CORE_MIN
    core[small] = masks[small]
    count = core.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = (core.reshape(t_len, 1, -1).astype(np.float32) @ f.reshape(t_len, -1, 3))[:, 0] / count[:, None]
    geo = _geometry(diff, masks, rgb - bg, noise)
    found = masks.any(axis=(1, 2)) & geo["valid"]
    masks &= found[:, None, None]
    nan = np.where(found, 1.0, np.nan)
    centres = np.stack([geo["cx"], geo["cy"]], axis=1) * nan[:, None]
    sizes = (geo["w"] + geo["h"]) / 2 * nan
    rgb = rgb.astype(np.float64) * nan[:, None]
    inside = _inside(masks, geo["w"], geo["h"]) & found

    background = _nearest(np.median(bg, axis=0), BACKGROUNDS, _MAX_BG_DIST)
    colour = shape = None
    if found.any() and found.mean() >= _MIN_FOUND:
        colour = _classify_colour(np.median(rgb[found], axis=0), np.median(bg[found], axis=0),
                                  {**COLOURS, **(extra_colours or {})})
        shape = _vote(_shapes(geo["fill"], geo["skew"])[found])
    motion = _motion(found, centres, sizes, height, width)
    return Judgement(colour, shape, motion, background, found, centres, sizes, rgb, bg.astype(np.float64), inside,
                     masks)


def motion_matches(prompt_motion: str, judged_motion: str | None) -> bool:
    """Whether a judged motion satisfies a prompt's; a short bounce clip may show no reflection (spec)."""
    if prompt_motion == "bounce":
        return judged_motion in ("bounce", "left", "right")
    return judged_motion == prompt_motion


def consistency(j: Judgement, frames: np.ndarray) -> dict[str, float]:
    """Temporal-consistency figures of a judged clip (colours in 0-255 units, NaN where undefined)."""
    f = np.asarray(frames).astype(np.float32)
    t_len = len(f)
    found = j.found
    # Keep 2 px away from the object so its anti-aliased edge does not count as background flicker.
    busy = _dilate(_dilate(j.masks))
    flicker = np.nan
    if t_len > 1:
        free = ~(busy[1:] | busy[:-1])
        change = np.abs(f[1:] - f[:-1]).mean(-1)
        n = free.sum((1, 2))
        per_pair = (change * free).sum((1, 2))[n > 0] / n[n > 0]
        flicker = float(per_pair.mean()) if len(per_pair) else np.nan
    rgb, sizes, centres = j.object_rgb[found], j.sizes[found], j.centres[found]
    colour_std = float(rgb.std(axis=0).mean()) if len(rgb) > 1 else np.nan
    size_cv = float(sizes.std() / sizes.mean()) if len(sizes) > 1 and sizes.mean() > 0 else np.nan
    straight = np.nan
    if len(centres) > 1:
        path = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
        # Under 1 px of total path is estimation jitter, not travel.
        straight = float(np.linalg.norm(centres[-1] - centres[0]) / path) if path >= 1.0 else np.nan
    q = max(1, t_len // 4)
    first, last = j.object_rgb[:q][found[:q]], j.object_rgb[-q:][found[-q:]]
    drift = float(np.linalg.norm(first.mean(0) - last.mean(0))) if len(first) and len(last) else np.nan
    return {
        "background_flicker": flicker,
        "colour_stability": colour_std,
        "size_stability": size_cv,
        "path_straightness": straight,
        "found_fraction": float(found.mean()) if t_len else np.nan,
        "colour_drift": drift,
    }


def _dilate(m: np.ndarray) -> np.ndarray:
    """One step of 4-connected dilation of (T, H, W) masks within each frame (array shifts: faster than scipy)."""
    out = m.copy()
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    out[:, :, 1:] |= m[:, :, :-1]
    out[:, :, :-1] |= m[:, :, 1:]
    return out


def _erode(m: np.ndarray) -> np.ndarray:
    """One step of 4-connected erosion of (T, H, W) masks within each frame; the frame's edge does not erode."""
    out = m.copy()
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    out[:, :, 1:] &= m[:, :, :-1]
    out[:, :, :-1] &= m[:, :, 1:]
    return out


def _border(f: np.ndarray) -> np.ndarray:
    """The pixels of each frame's 2-px border, (T, N, 3)."""
    t_len = len(f)
    return np.concatenate(
        [f[:, :2].reshape(t_len, -1, 3), f[:, -2:].reshape(t_len, -1, 3),
         f[:, 2:-2, :2].reshape(t_len, -1, 3), f[:, 2:-2, -2:].reshape(t_len, -1, 3)], axis=1)


def _segment(dist: np.ndarray, min_area: float) -> np.ndarray:
    """Per frame, the strongest blob above half of the frame's peak contrast, (T, H, W) bool (empty: none)."""
    t_len = len(dist)
    k = int(max(3, min_area // 2))
    # Peak contrast as the k-th largest distance: single noisy pixels do not set it, nor does a fainter second blob.
    contrast = -np.partition(-dist.reshape(t_len, -1), k - 1, axis=1)[:, k - 1]
    # Half the peak contrast is the 50 %-coverage level, so a mask's area matches the true area under blur.
    thr = np.maximum(_FLOOR, 0.5 * contrast)
    blobs = (dist > thr[:, None, None]) & (contrast >= _MIN_CONTRAST)[:, None, None]
    labels, n = ndimage.label(blobs, structure=_SPATIAL)  # frames are labelled independently
    best = np.zeros(t_len, np.int64)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    ok = np.flatnonzero(area >= min_area)
    if ok.size:
        # The strongest blob has the largest summed contrast: a big faint blob loses to the solid object.
        mass = np.bincount(flat, weights=dist.ravel(), minlength=n + 1)[1:]
        frame_of = np.array([box[0].start for box in ndimage.find_objects(labels)])
        order = ok[np.lexsort((mass[ok], frame_of[ok]))]  # by frame, then by mass
        last = np.r_[frame_of[order][1:] != frame_of[order][:-1], True]
        best[frame_of[order][last]] = order[last] + 1
    return (labels == best[:, None, None]) & (best > 0)[:, None, None]


def _geometry(diff: np.ndarray, masks: np.ndarray, v: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame sub-pixel box (cx, cy, w, h), fill ratio and skew from the soft coverage near each mask.

    The coverage is each pixel's projection on (object - background) colour, so anti-aliased and blurred edges
    count fractionally.
    """
    vv = (v**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        near = _dilate(_dilate(masks))
        # Unclipped, so pixel noise averages out of the area.
        proj = (diff.reshape(len(v), -1, 3) @ v[:, :, None].astype(np.float32)).reshape(masks.shape)
        alpha = proj / vv[:, None, None].astype(np.float32) * near
        area = alpha.sum(axis=(1, 2))
        # Row/column maxima are biased up by noise (~2 sigma for a max over tens of pixels): remove that bias with
        # the pixel noise in coverage units, keeping full coverage at 1.
        bias = np.minimum(2.0 * noise / np.sqrt(vv), 0.3)[:, None, None]
        prof = np.clip((alpha - bias) / (1.0 - bias), 0.0, 1.0)
        col, row = prof.max(axis=1), prof.max(axis=2)  # (T, W), (T, H)
        # Row/column maxima integrate to the bounding box's sides even for anti-aliased or blurred edges.
        w, h = col.sum(axis=1), row.sum(axis=1)
        xs = np.arange(col.shape[1]) + 0.5
        ys = np.arange(row.shape[1]) + 0.5
        cx, cy = col @ xs / w, row @ ys / h
        # A triangle (apex up) has narrow top rows, so its area centroid sits h/6 below its box centre.
        skew = (alpha.sum(axis=2) @ ys / area - cy) / h
        fill = area / (w * h)
    valid = (vv > 0) & (w > 0) & (h > 0) & (area > 0)
    return {"cx": cx, "cy": cy, "w": w, "h": h, "fill": fill, "skew": skew, "valid": valid}


def _inside(masks: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per frame: the object is not cut by the frame's border.

    All spec shapes have a square bounding box, so a cut shows as a short side along a touched axis; an object cut
    exactly along its own box (e.g. a square in a corner) cannot be told from one that just touches the edge.
    """
    left, right = masks[:, :, 0].any(axis=1), masks[:, :, -1].any(axis=1)
    top, bottom = masks[:, 0].any(axis=1), masks[:, -1].any(axis=1)
    with np.errstate(invalid="ignore"):
        tol = np.maximum(1.5, 0.1 * np.maximum(w, h))
        cut_x = (left | right) & ~(w >= h - tol)
        cut_y = (top | bottom) & ~(h >= w - tol)
    return ~((left & right) | (top & bottom) | cut_x | cut_y)


def _shapes(fill: np.ndarray, skew: np.ndarray) -> np.ndarray:
    """Per-frame shape from the box fill ratio (circle pi/4, square 1, triangle 1/2) and skew; "" if none.

    Blur rounds a small square's corners and a triangle's apex (fill drifts towards the circle's), so the skew,
    ~1/6 for a triangle and ~0 for the symmetric shapes, decides the triangle, and 0.92 splits circle from square.
    """
    with np.errstate(invalid="ignore"):
        triangle = (skew >= 0.06) & (fill < 0.95)
        symmetric = np.abs(skew) < 0.05
        square = symmetric & (fill >= 0.92) & (fill < 1.15)
        circle = symmetric & (fill >= 0.64) & (fill < 0.92)
    return np.select([triangle, square, circle], ["triangle", "square", "circle"], "")


def _vote(labels: np.ndarray) -> str | None:
    """Most common label ("" = none) if it holds at least half of the frames."""
    names, counts = np.unique(labels[labels != ""], return_counts=True)
    if not len(names) or counts.max() < _MIN_FOUND * len(labels):
        return None
    return str(names[np.argmax(counts)])


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]], max_dist: float) -> str | None:
    """Name of the palette colour nearest to `rgb`, or None if it is further than `max_dist`."""
    names = list(palette)
    d = np.linalg.norm(np.asarray([palette[n] for n in names], np.float64) - rgb, axis=1)
    i = int(np.argmin(d))
    return names[i] if d[i] <= max_dist else None


def _classify_colour(rgb: np.ndarray, bg: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str | None:
    """Nearest palette colour, each allowed to be blended up to 30 % towards the measured background."""
    best, best_d = None, np.inf
    for name, ref in palette.items():
        d = np.asarray(ref, np.float64) - bg
        a = np.clip(((rgb - bg) @ d) / max(float(d @ d), 1e-9), _BLEND_MIN, 1.0)
        dist = float(np.linalg.norm(rgb - (bg + a * d)))
        if dist < best_d:
            best, best_d = name, dist
    return best if best_d <= _MAX_COLOUR_DIST else None


def _motion(found: np.ndarray, centres: np.ndarray, sizes: np.ndarray, height: int, width: int) -> str | None:
    """Motion word from the centre and size paths of the found frames; None when ambiguous or unseen."""
    t_len = len(found)
    t = np.flatnonzero(found)
    if len(t) < 2 or len(t) < _MIN_FOUND * t_len:
        return None
    x, y, s = centres[t, 0], centres[t, 1], sizes[t]
    # Spec travel is >= 35 % of the side per clip (bounce: per 17 frames), so 15 % is clearly moving; short clips
    # scale the bar down so a 5-frame bounce (>= 9 %) still counts as moving.
    frac = float(np.clip(0.015 * (t_len - 1), 0.05, 0.15))
    move_x, move_y = frac * width, frac * height
    span = t[-1] - t[0]
    # Linear fits: the spec's motions are at constant speed, and fits average out per-frame jitter.
    dx = np.polyfit(t, x, 1)[0] * span
    dy = np.polyfit(t, y, 1)[0] * span
    s0, s1 = np.polyval(np.polyfit(t, s, 1), [t[0], t[-1]])
    ratio = s1 / max(s0, 1e-6)
    stable = 0.7 < ratio < 1.4
    # A turn needs both legs at least ~1.5 frames of travel (so a reflection late in the clip still shows), but not
    # less than 2 % of the width (jitter); at spec speeds a bounce reflects at most once per ~16 frames.
    step = float(np.median(np.abs(np.diff(x))))
    turns = _reversals(x, max(0.02 * width, min(0.05 * width, 0.5 * move_x, 1.5 * step)))
    path_x = float(np.abs(np.diff(x)).sum())
    if 1 <= turns <= 1 + (t_len - 1) // 16 and path_x >= move_x and np.ptp(x) >= 0.5 * move_x \
            and abs(dy) < move_y and stable:
        return "bounce"
    nx, ny = abs(dx) / move_x, abs(dy) / move_y
    if max(nx, ny) >= 1.0:
        horizontal = nx >= ny
        v, net = (x, dx) if horizontal else (y, dy)
        monotone = abs(v[-1] - v[0]) / max(float(np.abs(np.diff(v)).sum()), 1e-6)
        if monotone < 0.6 or min(nx, ny) > 0.5 * max(nx, ny):
            return None
        if horizontal:
            return "right" if net > 0 else "left"
        return "down" if net > 0 else "up"  # image y grows downwards; "up" is towards the top
    if ratio >= 1.4:
        return "grow"
    if ratio <= 0.7:
        return "shrink"
    if max(nx, ny) < 0.5 and 1 / 1.2 <= ratio <= 1.2:
        return "still"
    return None


def _reversals(v: np.ndarray, hysteresis: float) -> int:
    """Direction reversals of a 1-D path, each leg at least `hysteresis` long."""
    return len(turn_points(v, hysteresis))


def turn_points(v: np.ndarray, hysteresis: float) -> list[float]:
    """Where a 1-D path reverses direction (the extreme values), each leg at least `hysteresis` long."""
    points, direction = [], 0.0
    lo = hi = extreme = float(v[0])
    for val in map(float, v[1:]):
        if direction == 0.0:
            lo, hi = min(lo, val), max(hi, val)
            if val - lo >= hysteresis or hi - val >= hysteresis:
                direction, extreme = (1.0 if val - lo >= hysteresis else -1.0), val
        elif (val - extreme) * direction > 0:
            extreme = val
        elif (extreme - val) * direction >= hysteresis:
            points.append(extreme)
            direction, extreme = -direction, val
    return points
