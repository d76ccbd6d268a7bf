"""Where a model's bounces turn and how steady their speed is, by how the clip is sampled; and the extension seams
by what is extended.

    python benchmarks/bounce_motion.py [--model shapes] [--clips 90] [--extend-seeds 4] [--threads 2]

Turns: `--clips` 17-frame clips of the extension prompts' bounces (`kinema/eval/prompts/extend.txt`, clip k is prompt
k mod 9 with seed 7000 + k), rendered by the shapes world, sampled jointly (`kinema generate`), streamed latent frame
by latent frame on a clean past (`kinema generate --stream`), and streamed then refined (`--refine 0.5`). The judge's
turn points (legs >= 2 % of the width, as the 129-frame bounce check counts them) give each turn's gap to the edge:
the centre's distance to the nearer side less half the object's size (0: touching, as the spec's bounce turns; the
129-frame check allows 3.84 px). Speed jitter is the coefficient of variation of |dx| between consecutive frames, per
clip (median over clips).

Extension (`--extend-seeds` > 0): `kinema eval --extend`'s measurement (17 -> 65 frames, seams at 17/29/41/53,
`kinema.eval.extension`) of extensions of input clips that are rendered, jointly sampled (the eval's own inputs) or
streamed, seeds 1000 s + i as the eval draws them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from kinema.eval.long import EDGE_SLACK

SOURCES = ("rendered", "joint", "streamed", "refined")
SLACK = EDGE_SLACK * 64  # px: the 129-frame bounce check's allowance at the shapes world's 64 px (3.84)


def input_clip(pipe, kind: str, prompt: str, scene, seed: int) -> np.ndarray:
    """(17, H, W, 3) uint8: a clip of the prompt, rendered, jointly sampled, streamed, or streamed and refined from
    t = 0.5 (`--refine 0.5`)."""
    from kinema.data.shapes import render_clip
    from kinema.pipelines.stream import stream_video
    from kinema.video.io import Video

    s = pipe.settings()
    if kind == "rendered":
        return render_clip(scene, np.random.default_rng(seed), s.frames, s.height, s.width).frames
    if kind == "streamed":
        return Video.from_tensor(torch.cat(list(stream_video(pipe, [prompt], [seed])), dim=2)[0]).frames
    return pipe.generate([prompt], seeds=[seed], refine=0.5 if kind == "refined" else 0.0)[0].frames


def turn_gaps(frames: np.ndarray) -> tuple[list[float], float] | None:
    """Each turn's gap to the edge (px) and the clip's speed jitter; None when the object is missed in > 10 %."""
    from kinema.eval.judge import judge_clip, turn_points

    j, width = judge_clip(frames), frames.shape[2]
    if j.found.mean() < 0.9:
        return None
    x, half = j.centres[j.found, 0], 0.5 * float(np.median(j.sizes[j.found]))
    gaps = [min(p, width - p) - half for p in turn_points(x, 0.02 * width)]
    speed = np.abs(np.diff(x))
    return gaps, float(speed.std() / max(float(np.median(speed)), 1e-6))


def turn_table(pipe, prompts: list, clips: int) -> str:
    lines = ["| clips made by | clips judged | turns | gap median (px) | gap 90th pct | "
             f"turns > {SLACK:.2f} px | turns > 8 px | speed jitter |", "|---|---|---|---|---|---|---|---|"]
    for kind in SOURCES:
        rows = [turn_gaps(input_clip(pipe, kind, *prompts[k % len(prompts)], 7000 + k)) for k in range(clips)]
        rows = [r for r in rows if r is not None]
        g = np.array([x for gaps, _ in rows for x in gaps])
        lines.append(f"| {kind} | {len(rows)} / {clips} | {len(g)} | {np.median(g):.2f} | {np.percentile(g, 90):.2f} "
                     f"| {np.mean(g > SLACK):.0%} | {np.mean(g > 8):.0%} | {np.median([j for _, j in rows]):.2f} |")
    return "\n".join(lines)


def extension_table(pipe, prompts: list, seeds: int) -> str:
    from kinema.eval.extension import SEED_OFFSET, measure_extension, summarise_extension, window_starts
    from kinema.pipelines.extend import extend_video
    from kinema.video.io import Video

    s = pipe.settings()
    starts = window_starts(s.frames, 65, s.frames, 5)
    lines = ["| input clips | videos | videos passing | seam ratio mean | worst | seams over 1.5 | object drift mean / max |",
             "|---|---|---|---|---|---|---|"]
    for kind in SOURCES[:3]:
        rows = []
        for k in range(seeds):
            for i, (prompt, scene) in enumerate(prompts):
                clip = Video(input_clip(pipe, kind, prompt, scene, 1000 * k + i), s.fps)
                long = extend_video(pipe, clip, prompt, 65, 5, 1000 * k + i + SEED_OFFSET)
                rows.append(measure_extension(long.frames, starts))
        r = summarise_extension(rows)
        lines.append(f"| {kind} | {r['n']} | {r['pass']:.0%} | {r['seam_ratio_mean']:.2f} | {r['seam_ratio_max']:.2f} "
                     f"| {r['seams_over']} / {r['seams']} | {r['object_drift_mean']:.1f} / {r['object_drift_max']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--clips", type=int, default=90, help="17-frame clips per source for the turn table")
    p.add_argument("--extend-seeds", type=int, default=0, help="seeds per prompt for the extension table (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import kinema
    from kinema.eval.run import load_prompts

    torch.set_num_threads(args.threads)
    pipe = kinema.load_pipeline(args.model)
    prompts = load_prompts("kinema/eval/prompts/extend.txt")
    with torch.no_grad():
        print(f"Bounce turns of 17-frame clips, model {args.model}\n\n{turn_table(pipe, prompts, args.clips)}\n")
        if args.extend_seeds:
            print(f"Extensions to 65 frames by input clip, {args.extend_seeds} seeds\n\n"
                  f"{extension_table(pipe, prompts, args.extend_seeds)}")


if __name__ == "__main__":
    main()
