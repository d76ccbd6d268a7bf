"""How evenly a model's VAE spaces motion across the frames of a latent frame (why extension seams jump).

    python benchmarks/latent_phase.py [--model shapes] [--vae CKPT] [--seeds 2] [--generated [--set steps=40 ...]]

A causal video VAE turns frames 4k-3 .. 4k (k >= 1) into latent frame k. For the extension prompts' bounces
(`kinema/eval/prompts/extend.txt`, rendered at 65 frames, seeds 1000 s + i as `kinema eval --extend` draws them), the
judge's object centre gives, for the frames from 17 on:

- mean |dx| into each frame by its place in its latent frame (4k + 1 is a latent frame's first), for the real clips,
  their VAE reconstructions and, with --generated, the model's own extensions (`kinema extend` to 65 frames; --set
  changes a generation setting, e.g. steps=40, sampler=unipc, guidance_2=5);
- the reconstruction's offset from the real centre along the direction of motion (px, + ahead), away from turns.

Prints a markdown table (evenly spaced motion reads the same in every column: first / last = 1) and the VAE's
held-out reconstruction PSNR (`kinema.eval.vae`). --vae puts a `kinema train-vae` checkpoint's VAE (its EMA) in the
model's place, to judge a decoder before it is written into a model folder.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

PHASES = (1, 2, 3, 0)   # frame index mod 4: a latent frame's first .. last


def by_phase(values: dict[int, list[float]]) -> list[float]:
    return [float(np.mean(values[r])) for r in PHASES]


def steps_by_phase(centres: np.ndarray, start: int = 17) -> dict[int, list[float]]:
    """|dx| into each frame from `start` on, grouped by frame index mod 4."""
    out = {r: [] for r in PHASES}
    for t in range(start, len(centres)):
        out[t % 4].append(abs(float(centres[t] - centres[t - 1])))
    return out


def lag_by_phase(true_x: np.ndarray, seen_x: np.ndarray, found_x: np.ndarray) -> dict[int, list[float]]:
    """Offset of `found_x` from `seen_x` along the true motion, on frames away from turns."""
    v, out = np.gradient(true_x), {r: [] for r in PHASES}
    for t in range(5, len(true_x) - 1):
        if abs(v[t]) > 0.5 and np.sign(v[t - 1]) == np.sign(v[t + 1]):
            out[t % 4].append(float((found_x[t] - seen_x[t]) * np.sign(v[t])))
    return out


def load(model: str, vae: str | None):
    import kinema
    from kinema.train.dit import load_vae_checkpoint

    pipe = kinema.load_pipeline(model)
    if vae:
        pipe.vae.load_state_dict(load_vae_checkpoint(vae).state_dict())
    return pipe


def measure(pipe, seeds: int, generated: bool, settings: dict) -> dict[str, list[float]]:
    from kinema.data.shapes import render_clip
    from kinema.eval.extension import SEED_OFFSET
    from kinema.eval.judge import judge_clip
    from kinema.eval.run import load_prompts
    from kinema.pipelines.extend import extend_video
    from kinema.video.io import Video

    names = ("real clips", "VAE reconstructions", "generated extensions", "lag")
    acc = {name: {r: [] for r in PHASES} for name in names}
    for k in range(seeds):
        for i, (prompt, scene) in enumerate(load_prompts("kinema/eval/prompts/extend.txt")):
            seed = 1000 * k + i
            clip = render_clip(scene, np.random.default_rng(seed), 65, 64, 64)
            with torch.no_grad():
                recon = Video.from_tensor(pipe.decode(pipe.vae.encode(Video(clip.frames).to_tensor()))[0]).frames
            real_x, recon_x = judge_clip(clip.frames).centres[:, 0], judge_clip(recon).centres[:, 0]
            parts = {"real clips": steps_by_phase(real_x), "VAE reconstructions": steps_by_phase(recon_x),
                     "lag": lag_by_phase(clip.centres[:, 0], real_x, recon_x)}
            if generated:
                start = pipe.generate([prompt], seeds=[seed], **settings)[0]
                video = extend_video(pipe, start, prompt, 65, 5, seed + SEED_OFFSET, **settings)
                parts["generated extensions"] = steps_by_phase(judge_clip(video.frames).centres[:, 0])
            for name, values in parts.items():
                for r in PHASES:
                    acc[name][r] += values[r]
    return {name: by_phase(values) for name, values in acc.items() if values[1]}


def table(results: dict[str, list[float]]) -> str:
    lines = ["| mean abs(dx) into frame (px) | 4k + 1 (first) | 4k + 2 | 4k + 3 | 4k + 4 (last) | first / last |",
             "|---|---|---|---|---|---|"]
    for name, v in results.items():
        if name != "lag":
            lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {v[0] / v[3]:.2f} |")
    lag = results["lag"]
    lines += ["", "reconstruction's offset along the motion (px, + ahead), by place in the latent frame: "
              + ", ".join(f"{x:+.2f}" for x in lag)]
    return "\n".join(lines)


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--vae", help="a kinema train-vae checkpoint whose VAE replaces the model's")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--generated", action="store_true", help="also measure the model's own extensions (slower)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a generation setting for --generated (steps, sampler, guidance, guidance_2, shift)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    from kinema.eval.vae import reconstruction_psnr

    pipe = load(args.model, args.vae)
    print(table(measure(pipe, args.seeds, args.generated, settings)))
    print(f"held-out reconstruction PSNR: {reconstruction_psnr(pipe.vae)['psnr_mean']:.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
