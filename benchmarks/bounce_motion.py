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

Continuation speed (`--speed-clips` > 0): 25-frame rendered bounces of the same prompts (clip k: prompt k mod 9,
seed 9000 + k; clips that turn in frames 9-24 are skipped), their first 17 frames encoded as the clean past of a
stream (as `kinema extend` continues a video) and two more latent frames (8 frames) streamed, two seeds each. The
continuation's speed (a line fitted to the judged centres of frames 17-24) over the clip's own (frames 9-24): how
well the model reads the speed of the past, which the spec draws per clip (35-55 % of the side per 17 frames).

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


def continuation_speeds(pipe, prompts: list, clips: int, seeds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(true speed, continued speed) in px/frame, one row per streamed continuation (`clips` clips x `seeds`)."""
    from kinema.data.shapes import render_clip
    from kinema.eval.judge import judge_clip
    from kinema.pipelines.stream import stream_latents
    from kinema.video.io import Video

    true, continued, k = [], [], 0
    while len(true) < clips * seeds:
        prompt, scene = prompts[k % len(prompts)]
        frames = render_clip(scene, np.random.default_rng(9000 + k), 25, 64, 64).frames
        k += 1
        x = judge_clip(frames).centres[:, 0]
        if len(np.unique(np.sign(np.diff(x[9:])))) > 1:  # a turn in frames 9-24
            continue
        speed = np.polyfit(np.arange(16), x[9:], 1)[0]                                # signed, px/frame
        past = pipe.vae.encode(Video(frames).to_tensor().to(pipe.device))[:, :, :5]    # frames 0-16
        for seed in range(seeds):
            new = torch.cat(list(stream_latents(pipe, [prompt], [seed], context=past, frames=25, window=4)), dim=2)
            video = Video.from_tensor(pipe.decode(torch.cat([past, new], dim=2))[0]).frames
            true.append(abs(speed))
            continued.append(np.polyfit(np.arange(8), judge_clip(video).centres[17:, 0], 1)[0] * np.sign(speed))
    return np.array(true), np.array(continued)


def speed_table(pipe, prompts: list, clips: int) -> str:
    true, continued = continuation_speeds(pipe, prompts, clips)
    err = np.abs(continued / true - 1)
    slope = np.polyfit(true, continued, 1)[0]
    return ("| continuations | true speed (px/frame) | continued / true, mean | \\|error\\| mean | 90th pct | "
            "correlation | slope of continued on true |\n|---|---|---|---|---|---|---|\n"
            f"| {len(true)} | {true.min():.2f}-{true.max():.2f} | {np.mean(continued / true):.3f} | {err.mean():.1%} | "
            f"{np.percentile(err, 90):.1%} | {np.corrcoef(true, continued)[0, 1]:.2f} | {slope:.2f} |")


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
    p.add_argument("--speed-clips", type=int, default=0, help="rendered clips for the continuation-speed table")
    p.add_argument("--extend-seeds", type=int, default=0, help="seeds per prompt for the extension table (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import kinema
    from kinema.eval.run import load_prompts

    torch.set_num_threads(args.threads)
    pipe = kinema.load_pipeline(args.model)
    prompts = load_prompts("kinema/eval/prompts/extend.txt")
    with torch.no_grad():
        if args.clips:
            print(f"Bounce turns of 17-frame clips, model {args.model}\n\n{turn_table(pipe, prompts, args.clips)}\n")
        if args.speed_clips:
            print(f"Continued speed of rendered bounces, model {args.model}\n\n"
                  f"{speed_table(pipe, prompts, args.speed_clips)}\n")
        if args.extend_seeds:
            print(f"Extensions to 65 frames by input clip, {args.extend_seeds} seeds\n\n"
                  f"{extension_table(pipe, prompts, args.extend_seeds)}")


if __name__ == "__main__":
    main()
