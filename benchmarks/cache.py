"""Speed of DiT training steps reading a latent cache vs encoding the videos on the fly.

    python benchmarks/cache.py [--model shapes] [--clips 16] [--steps 6] [--batch 4] [--threads 1]

Writes a folder of shapes-world clips as H.264 MP4s with sidecar captions, then times `kinema train` steps (the
median wall time of a whole step: data, forward, backward, optimizer) with `--data` (decode + VAE encode + text
encode every step) and with `--cache` (after a one-off `kinema cache`), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_clips(root: Path, n: int, frames: int, size: int) -> None:
    from kinema.data.shapes import random_training_clip
    from kinema.video.io import write_mp4

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        clip = random_training_clip(rng, frames, size, size)
        write_mp4(root / f"clip{i:03d}.mp4", clip.frames, fps=8)
        (root / f"clip{i:03d}.txt").write_text(clip.caption)


def step_times(out: Path, source: list[str], a) -> list[float]:
    from kinema.train import dit

    argv = ["--out", str(out), "--preset", a.preset, "--frames", str(a.frames), "--size", str(a.size), "--steps",
            str(a.steps), "--batch", str(a.batch), "--threads", str(a.threads), "--ckpt-every", "100000", "--quiet",
            *source]
    dit.train(dit.parse_args(argv))
    return [json.loads(x)["sec"] for x in (out / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--preset", default="shapes")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import kinema
    from kinema.data.latent_cache import build_cache
    from kinema.train.sources import video_config

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        make_clips(root / "data", a.clips, a.frames, a.size)
        fly = step_times(root / "fly", ["--data", str(root / "data"), "--vae", a.model], a)
        pipe = kinema.load_pipeline(a.model)
        args = argparse.Namespace(frames=a.frames, size=a.size, aspect_ratios="1", frame_buckets=None, fps=None)
        t0 = time.perf_counter()
        build_cache(root / "data", pipe, root / "cache", video_config(args, pipe.vae, pipe.dit.config.patch_size[1]))
        t_cache = time.perf_counter() - t0
        cached = step_times(root / "cached", ["--cache", str(root / "cache")], a)
    f, c = statistics.median(fly), statistics.median(cached)
    print(f"model {a.model}, DiT preset {a.preset}, {a.clips} clips of {a.frames}x{a.size}x{a.size}, batch {a.batch}, "
          f"{a.threads} thread(s), torch {torch.__version__}\n")
    print("| data path | median s / training step | speed-up |\n|---|---|---|")
    print(f"| `--data` (decode + VAE + text encoder every step) | {f:.3f} | 1.0x |")
    print(f"| `--cache` (read safetensors shards) | {c:.3f} | {f / c:.1f}x |")
    print(f"\none-off `kinema cache` of the {a.clips} clips: {t_cache:.1f} s "
          f"(pays for itself after {t_cache / max(f - c, 1e-9):.0f} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
