"""Measuring video extension (`kinema extend`): seams between windows, and colour drift from first to last window.

`kinema.pipelines.extend.extend_video` keeps the input clip and then appends windows: each window is one model
generation of `window` frames whose first `context` frames re-encode the last `context` frames so far, so it adds
`window - context` new frames (the last window cut to length). The seams are the first new frame of each window:
for a 17-frame clip extended to 65 frames with the shapes model (window 17, context 5) they are frames 17, 29, 41
and 53. Measured per extended video:

- seam ratio: the mean absolute difference (0-255) between the frame before a seam and the seam frame, over the
  mean absolute frame-to-frame difference of the pairs within the two windows that seam joins (1 = invisible seam;
  must be <= 1.5 at every seam). Comparing with the neighbouring windows rather than the whole video keeps motion
  that speeds up (growing) from reading as a seam. Undefined for a still scene (nothing moves within windows), so
  the prompt list has no still prompts.
- colour drift: the judge's object colour (`object_rgb`, mean over the frames where it finds the object) in the first
  window (the input clip) against the last window, the largest per-channel difference in 0-255 units (must be
  <= 8). The background's drift is reported alongside.

    kinema eval --extend --model shapes        # prompts/extend.txt, 17 -> 65 frames
"""

from __future__ import annotations

import logging

import numpy as np

from kinema.eval.judge import judge_clip

log = logging.getLogger(__name__)
MAX_SEAM_RATIO = 1.5
MAX_DRIFT = 8.0                # 0-255 units per channel
SEED_OFFSET = 500_000          # the extension's seed, away from the input clip's (windows use seed + window)


def window_starts(input_frames: int, frames: int, window: int, context: int) -> list[int]:
    """First frame of each window `extend_video` appends to an `input_frames` clip to reach `frames`."""
    if not 1 <= context < window:
        raise ValueError(f"context must be between 1 and the window ({window}) - 1, got {context}")
    if not 0 < input_frames < frames:
        raise ValueError(f"the extended length ({frames}) must exceed the input's ({input_frames} frames)")
    return list(range(input_frames, frames, window - context))


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """(T - 1,) mean absolute difference between consecutive frames, 0-255 units."""
    f = np.asarray(frames).astype(np.float32)
    return np.abs(f[1:] - f[:-1]).reshape(len(f) - 1, -1).mean(axis=1)


def seam_ratios(frames: np.ndarray, starts: list[int]) -> dict:
    """Difference at each seam (frame s-1 -> s) over the mean difference within the two windows it joins (so that
    motion that speeds up, like growing, does not read as a seam); `within_diff` is the mean over all windows."""
    frames = np.asarray(frames)
    if not starts or any(not 1 <= s < len(frames) for s in starts) or sorted(set(starts)) != list(starts):
        raise ValueError(f"seams {starts} must be increasing frames inside the {len(frames)}-frame video")
    d = frame_differences(frames)
    bounds = [0, *starts, len(frames)]
    # pair t compares frames t and t + 1; window w holds pairs bounds[w] .. bounds[w + 1] - 2
    inside = [d[a:b - 1] for a, b in zip(bounds[:-1], bounds[1:])]
    seams, ratios = [], []
    for w, s in enumerate(starts):
        near = np.concatenate([inside[w], inside[w + 1]])
        seams.append(float(d[s - 1]))
        ratios.append(seams[-1] / float(near.mean()) if len(near) and near.mean() > 0 else float("inf"))
    within = np.concatenate(inside)
    return {"seam_diffs": seams, "within_diff": float(within.mean()) if len(within) else float("nan"),
            "seam_ratios": ratios, "max_seam_ratio": max(ratios)}


def colour_drift(frames: np.ndarray, starts: list[int], extra_colours: dict | None = None) -> dict:
    """Object and background colour drift (largest per-channel difference, 0-255) from the first window
    (frames before the first seam) to the last (from the last seam on); NaN where the object is not found."""
    j = judge_clip(frames, extra_colours)
    first, last = slice(0, starts[0]), slice(starts[-1], len(j.found))

    def drift(rgb: np.ndarray, found: np.ndarray) -> float:
        a, b = rgb[first][found[first]], rgb[last][found[last]]
        return float(np.abs(a.mean(0) - b.mean(0)).max()) if len(a) and len(b) else float("nan")

    every = np.ones_like(j.found)
    return {"object_drift": drift(j.object_rgb, j.found), "background_drift": drift(j.background_rgb, every),
            "found_first": float(j.found[first].mean()), "found_last": float(j.found[last].mean())}


def measure_extension(frames: np.ndarray, starts: list[int], extra_colours: dict | None = None) -> dict:
    """Seam ratios and colour drift of one extended video, and whether it meets both bars."""
    row = {**seam_ratios(frames, starts), **colour_drift(frames, starts, extra_colours)}
    row["pass"] = bool(row["max_seam_ratio"] <= MAX_SEAM_RATIO and row["object_drift"] <= MAX_DRIFT)
    return row


def extend_all(pipe, prompts: list[str], seeds: int, frames: int = 65, context: int = 5,
               extra_colours: dict | None = None, match: float = 1.0, colour_method: str | None = None,
               **settings) -> list[dict]:
    """For each (seed k, prompt i): generate a clip of the model's length (seed 1000 k + i), extend it to `frames`
    (colour match `match` by `colour_method`, None: kinema extend's), and measure it. Rows hold the prompt, seed,
    seams and `measure_extension`'s figures."""
    from kinema.pipelines.extend import COLOUR_METHOD, extend_video

    s = pipe.settings(**settings)
    if (frames - 1) % 4 or (context - 1) % 4:
        raise ValueError(f"--extend frames and --context must be 1 + 4k, got {frames} and {context}")
    starts = window_starts(s.frames, frames, s.frames, context)  # fails before any generation
    rows = []
    for k in range(seeds):
        for i, prompt in enumerate(prompts):
            seed = 1000 * k + i
            clip = pipe.generate([prompt], seeds=[seed], **settings)[0]
            long = extend_video(pipe, clip, prompt, frames, context, seed + SEED_OFFSET, match=match,
                                colour_method=colour_method or COLOUR_METHOD, **settings)
            rows.append({"prompt": prompt, "seed": seed, "seams": starts,
                         **measure_extension(long.frames, starts, extra_colours)})
            log.info("extended %d / %d", len(rows), seeds * len(prompts))
    return rows


def summarise_extension(rows: list[dict]) -> dict:
    """Worst / mean figures over all videos; NaN drifts (object lost) count as failures."""
    ratios = np.concatenate([r["seam_ratios"] for r in rows])
    drift = np.array([r["object_drift"] for r in rows])
    bg = np.array([r["background_drift"] for r in rows])
    return {"n": len(rows), "pass": float(np.mean([r["pass"] for r in rows])),
            "seam_ratio_mean": float(ratios.mean()), "seam_ratio_max": float(ratios.max()),
            "seams_over": int((ratios > MAX_SEAM_RATIO).sum()), "seams": len(ratios),
            "object_drift_mean": float(np.nanmean(drift)) if (~np.isnan(drift)).any() else float("nan"),
            "object_drift_max": float(np.nanmax(drift)) if (~np.isnan(drift)).any() else float("nan"),
            "object_lost": int(np.isnan(drift).sum()),
            "background_drift_max": float(bg.max())}


def format_extension(rows: list[dict], summary: dict, title: str) -> str:
    """Markdown: one row per video, then the summary against the bars."""
    lines = [f"**{title}**", "", "| prompt | seed | seam diff | within diff | worst seam ratio | object drift | "
             "background drift | pass |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['seed']} | {np.mean(r['seam_diffs']):.2f} | {r['within_diff']:.2f} | "
                     f"{r['max_seam_ratio']:.2f} | {r['object_drift']:.1f} | {r['background_drift']:.1f} | "
                     f"{'yes' if r['pass'] else 'no'} |")
    s = summary
    lines += ["", f"seams at frames {rows[0]['seams']}; seam / within-window ratio: mean {s['seam_ratio_mean']:.2f}, "
              f"worst {s['seam_ratio_max']:.2f} (bar {MAX_SEAM_RATIO}; {s['seams_over']} / {s['seams']} seams over)",
              f"object colour drift first -> last window: mean {s['object_drift_mean']:.1f}, worst "
              f"{s['object_drift_max']:.1f} /255 (bar {MAX_DRIFT:g}; object lost in {s['object_lost']} videos); "
              f"background worst {s['background_drift_max']:.1f} /255",
              f"videos meeting both bars: {100 * s['pass']:.0f} % of {s['n']}"]
    return "\n".join(lines)
