"""The temporal-consistency report (docs/temporal.md): the DiT's three attention modes side by side.

    python benchmarks/temporal.py --mode full=runs/cmp_full/model --mode factorised=runs/cmp_factorised/model \
        --mode causal=runs/cmp_causal/model --stream-model kinema/models/shapes --out docs/temporal

Per mode: prompt adherence and temporal consistency (the `kinema eval` judge on the canonical prompts), the
training time of its run (metrics.jsonl) and of one training step measured here, and how sampling time and
peak memory grow with the video's length (17, 33, 65, 129 frames; full/factorised sample the whole clip at
fixed steps, causal streams chunk by chunk with a rolling window). Each length is measured in a fresh process,
so its peak RSS is its own. Then the long-video check of the streamed causal model (129-frame bounces of six
prompts, seed i for prompt i; --bounce-seeds N adds seeds i + 100, ..., i + 100 (N - 1)). --notes FILE appends a
hand-written reading of the numbers to the report. Writes <out>.md, <out>_*.png and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LENGTHS = (17, 33, 65, 129)
BOUNCE = [("red", "circle", "black"), ("blue", "square", "white"), ("yellow", "triangle", "gray"),
          ("green", "circle", "gray"), ("purple", "square", "black"), ("orange", "triangle", "white")]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRss:
    """Samples this process's RSS every few milliseconds on a thread; `.peak` is the highest seen (MiB)."""

    def __init__(self, every: float = 0.003):
        import threading

        self.every, self.peak, self._stop = every, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def measure(model: str, frames: int, steps: int, window: int) -> dict:
    """One generation of `frames` frames in this process: sampling + decoding seconds, peak RSS and its rise."""
    import torch

    import kinema
    from kinema.pipelines.stream import stream_video

    torch.set_num_threads(1)
    pipe = kinema.load_pipeline(model)
    prompt = "a red circle bouncing left and right on a black background"
    pipe.text_encoder([prompt, ""])                          # text encoding is not part of the measurement
    causal = pipe.dit.config.attention == "causal"
    pipe.generate([prompt], frames=5, steps=1)               # warm-up: first-call allocations are not sampling's
    base, t0, first = rss_mb(), time.perf_counter(), None
    with PeakRss() as rss:
        if causal:
            for _ in stream_video(pipe, [prompt], frames=frames, steps=steps, window=window):
                first = first or time.perf_counter() - t0
        else:
            pipe.generate([prompt], frames=frames, steps=steps)
    seconds = time.perf_counter() - t0
    return {"frames": frames, "seconds": seconds, "first_frame_s": first, "peak_mb": rss.peak,
            "rise_mb": rss.peak - base}


def measure_in_subprocess(model: str, frames: int, steps: int, window: int) -> dict:
    cmd = [sys.executable, __file__, "_measure", model, str(frames), str(steps), str(window)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_seconds(model: str, batch: int = 32, repeats: int = 5) -> float:
    """Median seconds of one training step (forward + backward, batch of 17-frame clips) of the model's DiT."""
    import torch

    import kinema

    torch.set_num_threads(1)
    dit = kinema.load_pipeline(model).dit.train()
    x, c = torch.randn(batch, dit.config.in_channels, 5, 8, 8), torch.randn(batch, 32, dit.config.text_dim)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        dit(x, torch.rand(batch) * 1000, c).square().mean().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def training_record(model: str) -> dict:
    """Steps and wall time of the run that wrote the model folder (its metrics.jsonl, one level up)."""
    path = Path(model).parent / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {"steps": rows[-1]["step"], "wall_min": sum(r.get("sec", 0) for r in rows) / 60,
            "final_loss": statistics.mean(r["loss"] for r in rows[-100:])}


def adherence(model: str, seeds: int, steps: int) -> dict:
    from kinema.eval.run import generate_all, judge_row, load_prompts, summarise

    import kinema

    pipe = kinema.load_pipeline(model)
    prompts = load_prompts(Path(__file__).parents[1] / "kinema/eval/prompts/canonical.txt")
    videos = generate_all(pipe, [p for p, _ in prompts], seeds, 12, steps=steps)
    scenes = [s for _ in range(seeds) for _, s in prompts]
    return summarise([judge_row(v, s) for v, s in zip(videos, scenes)])


def long_bounces(model: str, frames: int, steps: int, window: int, seeds: int = 1) -> list[dict]:
    import torch

    import kinema
    from kinema.data.shapes import Scene
    from kinema.eval.long import judge_long_bounce
    from kinema.pipelines.stream import colour_anchored, stream_video
    from kinema.video.io import Video

    pipe, rows = kinema.load_pipeline(model), []
    runs = [(i + 100 * k, colour, shape, bg) for k in range(seeds) for i, (colour, shape, bg) in enumerate(BOUNCE)]
    for seed, colour, shape, bg in runs:
        prompt = f"a {colour} {shape} bouncing left and right on a {bg} background"
        scene = Scene(colour, shape, "bounce", bg)
        chunks = list(stream_video(pipe, [prompt], seeds=[seed], frames=frames, steps=steps, window=window))
        judge = lambda parts: judge_long_bounce(Video.from_tensor(torch.cat(parts, 2)).frames, scene)  # noqa: E731
        raw = judge(chunks)  # as streamed; then as `kinema generate --stream` writes it (colours anchored)
        rows.append({"prompt": prompt, "seed": seed, **judge(list(colour_anchored(iter(chunks), pipe.defaults.frames))),
                     "colour_drift_raw": raw["colour_drift"], "pass_raw": raw["pass"]})
    return rows


def plot(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for key, label in (("seconds", "sampling + decoding time (s)"), ("peak_mb", "peak RSS (MiB)")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for mode, r in results["modes"].items():
            ax.plot([m["frames"] for m in r["lengths"]], [m[key] for m in r["lengths"]], "o-", label=mode)
        ax.set_xlabel("frames"), ax.set_ylabel(label), ax.set_xticks(LENGTHS), ax.legend(), ax.grid(alpha=0.3)
        fig.tight_layout()
        names.append(f"{out.name}_{key}.png")
        save_figure(fig, out.parent / names[-1])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    attrs = ("colour", "shape", "motion", "background")
    for k, (mode, r) in enumerate(results["modes"].items()):
        ax.bar([i + 0.25 * k for i in range(4)], [100 * r["adherence"]["seen"][a] for a in attrs], 0.25, label=mode)
    ax.set_xticks([i + 0.25 for i in range(4)], attrs), ax.set_ylabel("seen prompts right (%)"), ax.legend()
    fig.tight_layout()
    names.append(f"{out.name}_adherence.png")
    save_figure(fig, out.parent / names[-1])
    return names


def save_figure(fig, path: Path) -> None:
    """PNG written atomically (temp file beside it, then rename), and the figure closed."""
    import matplotlib.pyplot as plt
    from kinema.atomic import atomic_path

    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_text(path: Path, text: str) -> None:
    """Written atomically, so an interrupted run leaves the previous report whole."""
    from kinema.atomic import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


PREFACE = """\
The DiT has three self-attention modes (`DiTConfig.attention`, `kinema/dit/model.py`), all through
`scaled_dot_product_attention`:

- **full**: every token attends to every token (Wan; Wan checkpoints always load as `full`).
- **factorised**: spatial attention within each latent frame (a reshape to (B·F, H·W, D)), then temporal attention
  across latent frames at each position ((B·H·W, F, D)), with an optional depthwise temporal conv beside it. The
  temporal attention is a second attention module per block; the FFN is narrowed to keep the parameter count
  (`kinema.train.dit.with_attention`).
- **causal**: block-causal, a token of latent frame i attends to frames <= i (a boolean mask). It streams: latent
  frames are sampled chunk by chunk, each chunk attending to the past through a `KVCache`
  (`kinema/dit/cache.py`), and the causal VAE decodes each chunk as it arrives (`kinema/pipelines/stream.py`,
  `kinema generate --stream`). The past is *clean* (as in CausVid / self forcing): once a chunk is sampled, one
  more DiT call at time 0 stores its keys and values. The model is trained for it by holding a random prefix of
  latent frames clean (given frames at timestep 0, loss masked), and on every 17-frame window of long bounce clips
  (a window that starts inside a clip always holds a clean prefix), so that a rolling window of past frames —
  constant cost per frame, any length — shows the model what it was trained on. Streaming equals sampling without
  the cache (the past recomputed in every call) to 1e-4, and a second cache mode (`past="joint"`) reproduces
  ordinary joint sampling of the causal model exactly; both are tested.

The three comparison models below were trained with the same data (the same 6,000-clip latent pool), the same
steps, batch and learning-rate schedule, and the same parameter count, from scratch:

```bash
kinema train --vae kinema/models/shapes --out runs/cmp_MODE --attention MODE --steps 800 --pool 6000 --batch 32 \\
  --lr 1e-3 --warmup 100 --cond-frac 0.35 --prefix-frac 0.15 --ckpt-every 200 --threads 1
```
"""


def bounce_summary(rows: list[dict]) -> str:
    """One line: how many streams pass, and how many meet each criterion."""
    n = len(rows)
    meets = {"colour frames": sum(r["colour_frames"] >= 0.95 for r in rows),
             "shape windows": sum(r["shape_windows"] >= 0.95 for r in rows),
             "inside": sum(r["inside"] for r in rows),
             "turns, all at edges": sum(r["turns"] >= 1 and r["turns"] == r["turns_at_edges"] for r in rows),
             "colour drift": sum(r["colour_drift"] <= 8 for r in rows)}
    return (f"**{sum(r['pass'] for r in rows)} of {n} pass** every criterion ({sum(r['pass_raw'] for r in rows)} of "
            f"{n} without the colour match); each criterion met by: "
            + ", ".join(f"{k} {v} of {n}" for k, v in meets.items()) + ".")


def report(results: dict, plots: list[str], notes: str = "") -> str:
    from kinema.eval.run import ATTRIBUTES, CONSISTENCY

    lines = ["# Temporal consistency: full, factorised and causal attention", "", PREFACE,
             "Produced by " + " then ".join(f"`{c}`" for c in results["commands"])
             + f" ({results['date']}" + (f"; the 129-frame bounces {results['long_date']}" if results.get("long_date") else "")
             + ", 1 thread per process).", "",
             "## Prompt adherence and temporal consistency (canonical prompts, seen split)", "",
             "| mode | params | steps | train wall (min) | step time (s) | " + " | ".join(ATTRIBUTES) + " | all | "
             + " | ".join(CONSISTENCY) + " |", "|" + "---|" * (6 + len(ATTRIBUTES) + len(CONSISTENCY))]
    for mode, r in results["modes"].items():
        s, tr = r["adherence"]["seen"], r["training"]
        lines.append(f"| {mode} | {r['params'] / 1e6:.2f} M | {tr.get('steps', '-')} | {tr.get('wall_min', 0):.0f} | "
                     f"{r['step_s']:.2f} | " + " | ".join(f"{100 * s[a]:.0f} %" for a in (*ATTRIBUTES, "all")) + " | "
                     + " | ".join(f"{s[k]:.2f}" for k in CONSISTENCY) + " |")
    lines += ["", "## Sampling time and peak memory by length", "",
              "| mode | frames | seconds | first frame (s) | peak RSS (MiB) | peak rise during sampling (MiB) |",
              "|---|---|---|---|---|---|"]
    for mode, r in results["modes"].items():
        for m in r["lengths"]:
            first = f"{m['first_frame_s']:.2f}" if m["first_frame_s"] else "-"
            lines.append(f"| {mode} | {m['frames']} | {m['seconds']:.2f} | {first} | {m['peak_mb']:.0f} | "
                         f"{m['rise_mb']:.0f} |")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    if results.get("long"):
        lines += ["## 129-frame streamed bounces (the default model)", "",
                  "Judged as `kinema generate --stream` writes them (frames after the first 17 colour-matched to "
                  "those, `--colour-match 1`); the last columns: the same stream without the match.",
                  "",
                  "| prompt | seed | found | colour frames | shape windows | inside | turns (at edges) | colour drift "
                  "| pass | drift, no match | pass, no match |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["long"]:
            lines.append(f"| {r['prompt']} | {r.get('seed', '-')} | {100 * r['found']:.0f} % | "
                         f"{100 * r['colour_frames']:.0f} % | "
                         f"{100 * r['shape_windows']:.0f} % | {r['inside']} | {r['turns']} ({r['turns_at_edges']}) | "
                         f"{r['colour_drift']:.1f} | {r['pass']} | {r['colour_drift_raw']:.1f} | {r['pass_raw']} |")
        lines += ["", bounce_summary(results["long"])]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", action="append", default=[], metavar="NAME=MODEL", help="mode name and model folder")
    p.add_argument("--reuse", metavar="JSON", help="take the modes' measurements from an earlier run's .json")
    p.add_argument("--stream-model", help="causal model for the 129-frame bounce check")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--bounce-seeds", type=int, default=1, help="seeds per prompt of the 129-frame bounce check")
    p.add_argument("--notes", help="markdown appended to the report (the reading of its numbers)")
    p.add_argument("--out", default="docs/temporal")
    args = p.parse_args(argv)
    import torch

    import kinema

    out, results = Path(args.out), {"date": time.strftime("%Y-%m-%d"), "cpu": f"{torch.get_num_threads()} threads",
                                    "modes": {}}
    if args.reuse:
        results = {**json.loads(Path(args.reuse).read_text()), "long": None}
    for spec in args.mode:
        mode, model = spec.split("=", 1)
        dit = kinema.load_pipeline(model).dit
        results["modes"][mode] = {
            "model": model, "params": sum(p.numel() for p in dit.parameters()), "training": training_record(model),
            "step_s": step_seconds(model), "adherence": adherence(model, args.seeds, args.steps),
            "lengths": [measure_in_subprocess(model, f, args.steps, args.window) for f in LENGTHS]}
        print(mode, json.dumps(results["modes"][mode]["lengths"]), flush=True)
    if args.stream_model:
        results["long"] = long_bounces(args.stream_model, 129, args.steps, args.window, args.bounce_seeds)
        results["long_date"] = time.strftime("%Y-%m-%d")
    command = "python benchmarks/temporal.py " + " ".join(sys.argv[1:] if argv is None else argv)
    done = results.get("commands", [])
    results["commands"] = done + [command] if done[-1:] != [command] else done  # a rerun is not a new step
    write_text(out.with_suffix(".json"), json.dumps(results, indent=2, default=float))
    notes = Path(args.notes).read_text() if args.notes else ""
    write_text(out.with_suffix(".md"), report(results, plot(results, out), notes))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        model, frames, steps, window = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(measure(model, frames, steps, window)))
        raise SystemExit(0)
    raise SystemExit(main())
