"""Time per stage and peak memory of text-to-video with a model (default: the embedded `shapes`).

    python benchmarks/generate.py [--model shapes] [--repeats 3] [--threads 2]

Prints a markdown table: model loading, text encoding (first prompt: includes loading the encoder), denoising,
VAE decoding and MP4 writing, each the median over repeats; the process's peak resident memory; and the wall
time of the whole `kinema generate` command in a fresh process (imports included), as a user sees it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "a red circle moving right on a black background"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def stage_times(model: str, repeats: int) -> dict[str, float]:
    import kinema
    from kinema.video.io import Video

    pipe, t_load = timed(lambda: kinema.load_pipeline(model))
    s = pipe.settings()
    _, t_text_cold = timed(lambda: pipe.encode_prompts([PROMPT], s.negative_prompt))
    rows = {"load model": [t_load], "text encoding (cold: loads the encoder)": [t_text_cold]}
    for r in range(repeats):
        pipe.text_encoder._cache.clear()  # measure a new prompt, not the cache
        (text, neg), t = timed(lambda: pipe.encode_prompts([PROMPT], s.negative_prompt))
        rows.setdefault("text encoding (warm)", []).append(t)
        with torch.no_grad():
            z, t = timed(lambda: pipe.denoise(pipe.initial_noise(s, [r]), text, neg, s))
        rows.setdefault(f"denoising ({s.steps} {s.sampler} steps, CFG {s.guidance:g})", []).append(t)
        video, t = timed(lambda: pipe.decode(z))
        rows.setdefault("VAE decoding", []).append(t)
        with tempfile.TemporaryDirectory() as d:
            _, t = timed(lambda: Video.from_tensor(video, s.fps).save(Path(d) / "b.mp4"))
        rows.setdefault("MP4 writing (H.264)", []).append(t)
    return {k: statistics.median(v) for k, v in rows.items()}


def cli_wall(model: str, repeats: int) -> float:
    walls = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            cmd = [sys.executable, "-m", "kinema.cli", "generate", PROMPT, "-o", f"{d}/out.mp4", "--quiet",
                   "--model", model]
            _, t = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
            walls.append(t)
    return statistics.median(walls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    times = stage_times(args.model, args.repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = cli_wall(args.model, args.repeats)
    print(f"model `{args.model}`, torch {torch.__version__}, {args.threads} threads, median of {args.repeats}\n")
    print("| stage | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.3f} |")
    print(f"| peak resident memory (this process) | {peak_mib:.0f} MiB |")
    print(f"| **whole `kinema generate` (fresh process, imports included)** | **{wall:.2f}** |")


if __name__ == "__main__":
    main()
