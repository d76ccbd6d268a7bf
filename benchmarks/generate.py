"""Time per stage and peak memory of text-to-video with a model (default: the embedded `shapes`).

    python benchmarks/generate.py [--model shapes] [--repeats 3] [--threads 2] [--cli-only]

Prints a markdown table: model loading, text encoding (first prompt: includes importing and loading the encoder),
denoising, VAE decoding and MP4 writing, each the median over repeats; the process's peak resident memory; and the
wall time of the whole `kinema generate` command in a fresh process (imports included, OMP_NUM_THREADS=threads), as
a user sees it. Also prints the text encoder's backend and the machine's load average before and after, since
other jobs on the CPU change every number. --cli-only measures the fresh-process wall time alone.
"""

from __future__ import annotations

import argparse
import os
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
    uses_transformers = getattr(pipe.text_encoder, "uses_transformers", True)  # trees before kinema.text.bert: True
    backend = "transformers" if uses_transformers else "kinema.text.bert"
    rows = {"load model": [t_load], f"text encoding (cold: imports and loads the encoder, {backend})": [t_text_cold]}
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


def cli_wall(model: str, repeats: int, threads: int) -> float:
    walls, env = [], {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            cmd = [sys.executable, "-m", "kinema.cli", "generate", PROMPT, "-o", f"{d}/out.mp4", "--quiet",
                   "--model", model]
            _, t = timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env))
            walls.append(t)
    return statistics.median(walls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cli-only", action="store_true", help="only the whole command's wall time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    times = {} if args.cli_only else stage_times(args.model, args.repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = cli_wall(args.model, args.repeats, args.threads)
    load = " -> ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in (load_before, os.getloadavg()))
    print(f"model `{args.model}`, torch {torch.__version__}, {args.threads} threads, median of {args.repeats}, "
          f"{os.cpu_count()} CPUs, load average {load}\n")
    print("| stage | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.3f} |")
    if times:
        print(f"| peak resident memory (this process) | {peak_mib:.0f} MiB |")
    print(f"| **whole `kinema generate` (fresh process, imports included)** | **{wall:.2f}** |")


if __name__ == "__main__":
    main()
