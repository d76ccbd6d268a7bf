"""Judging a long bouncing-object video (streamed generation, any length) against its prompt.

A 129-frame "a {colour} {shape} bouncing left and right on a {background} background" passes when the object is
found in the prompt's colour in >= 95 % of frames and in the prompt's shape in >= 95 % of 17-frame windows, is always
inside the frame, turns only near the left and right edges (and does turn), and its colour drifts <= 8/255 between
the first and the last 17 frames.

    report = judge_long_bounce(frames, scene)   # frames (T, H, W, 3) uint8
    report["pass"]
"""

from __future__ import annotations

import numpy as np

from kinema.data.shapes import COLOURS, Scene
from kinema.eval.judge import judge_clip, turn_points

WINDOW = 17                # frames per window: the length the models are trained on
MAX_COLOUR_DIST = 60.0     # as the clip judge: nearest vocabulary pair (yellow/orange) is 71 apart
EDGE_SLACK = 0.06          # a turn counts as "at the edge" when the centre is within half the object's size (where
                           # the centre of an object touching the side sits) + 6 % of the width (a frame's travel
                           # and the detector's error) of a side
MAX_DRIFT = 8.0            # colour drift, 0-255 units per channel


def windows(frames: int, size: int = WINDOW) -> list[slice]:
    """Windows of `size` frames that overlap by one frame and cover the clip (the last one ends at its end)."""
    starts = list(range(0, max(frames - size, 0) + 1, size - 1))
    if starts[-1] + size < frames:
        starts.append(frames - size)
    return [slice(s, min(s + size, frames)) for s in starts]


def judge_long_bounce(frames: np.ndarray, scene: Scene) -> dict:
    """Per-criterion figures and a pass/fail for a long bounce video of `scene`."""
    frames = np.asarray(frames)
    t_len, _, width = frames.shape[:3]
    j = judge_clip(frames)
    target = np.array(COLOURS[scene.colour], np.float32)
    colour_ok = j.found & (np.linalg.norm(j.object_rgb - target, axis=1) <= MAX_COLOUR_DIST)
    parts = windows(t_len)
    shapes = [judge_clip(frames[w]).shape for w in parts]
    x = j.centres[j.found, 0]
    turns = turn_points(x, 0.02 * width) if len(x) > 1 else []  # legs of >= 2 % of the width
    margin = 0.5 * float(np.median(j.sizes[j.found])) + EDGE_SLACK * width if j.found.any() else 0.0
    at_edge = [min(p, width - p) <= margin for p in turns]
    first, last = j.object_rgb[:WINDOW][j.found[:WINDOW]], j.object_rgb[-WINDOW:][j.found[-WINDOW:]]
    drift = float(np.abs(first.mean(0) - last.mean(0)).max()) if len(first) and len(last) else float("nan")
    report = {
        "frames": t_len,
        "found": float(j.found.mean()),
        "colour_frames": float(colour_ok.mean()),
        "shape_windows": float(np.mean([s == scene.shape for s in shapes])),
        "inside": bool(j.found.any() and j.inside[j.found].all()),
        "turns": len(turns),
        "turns_at_edges": int(sum(at_edge)),
        "colour_drift": drift,
    }
    report["pass"] = bool(report["colour_frames"] >= 0.95 and report["shape_windows"] >= 0.95 and report["inside"]
                          and report["turns"] >= 1 and all(at_edge) and drift <= MAX_DRIFT)
    return report
