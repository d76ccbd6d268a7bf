"""Teach the default model a colour it has never seen ("pink", RGB 240, 110, 180) with a LoRA, in a wall-time budget.

    python benchmarks/lora_pink.py [--minutes 15] [--clips 20] [--replay 20] [--seeds 2] [--threads 2]
    python benchmarks/lora_pink.py --minutes 0.2 --clips 4 --replay 4 --batch 4 --seeds 1 --max-prompts 3 \
        --eval-steps 2 --threads 1 --out /tmp/pink        (a smoke test: seconds, no meaningful numbers)

1. Renders `--clips` pink shapes-world clips with captions (written to <out>/data as MP4 + .txt for inspection) and
   `--replay` clips of the original colours (so the adapter is also shown what must not change); encodes both
   once with the model's VAE and text encoder into the run's latent pool.
2. LoRA-fine-tunes kinema/models/shapes on them with `kinema lora train`'s code (the one DiT training loop), for
   `--minutes` of training wall time: the step count is fitted to the budget from the speed of the first
   `--ckpt-every` steps (so the learning-rate schedule completes), and the run stops at the budget regardless.
3. Generates pink prompts and the seen prompts of kinema/eval/prompts/canonical.txt with and without the LoRA (same
   seeds) and judges them with kinema/eval (the judge also knows pink, in both cases); prints a markdown table and
   writes <out>/results.json. Pass: pink colour adherence >= 80 % with the LoRA, original colours drop <= 5 points.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CANONICAL = ROOT / "kinema" / "eval" / "prompts" / "canonical.txt"
PINK = ("pink",)


class BudgetSpent(Exception):
    """Raised from the checkpoint hook when the training budget is used up (the checkpoint is written first)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-time budget")
    p.add_argument("--model", default="shapes")
    p.add_argument("--out", default="runs/lora_pink")
    p.add_argument("--clips", type=int, default=20, help="pink training clips")
    p.add_argument("--replay", type=int, default=20, help="clips of the original colours mixed in (0: none)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ckpt-every", type=int, default=25, help="also how often the budget is checked")
    p.add_argument("--seeds", type=int, default=2, help="seeds per evaluation prompt")
    p.add_argument("--eval-steps", type=int, help="sampling steps of the evaluation (default: the model's)")
    p.add_argument("--max-prompts", type=int, default=0, help="evaluate only the first N prompts of each list")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength at evaluation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def pink_prompts() -> list[str]:
    """24 canonical pink prompts: every shape x motion, backgrounds in turn."""
    from kinema.data.shapes import BACKGROUNDS, MOTIONS, SHAPES, Scene

    backgrounds = list(BACKGROUNDS)
    scenes = [Scene("pink", shape, motion, backgrounds[(i + j) % 3])
              for i, shape in enumerate(SHAPES) for j, motion in enumerate(MOTIONS)]
    return [s.canonical_caption() for s in scenes]


def seen_prompts() -> list[str]:
    from kinema.eval.run import load_prompts

    return [p for p, scene in load_prompts(CANONICAL) if not scene.held_out]


def write_data(folder: Path, n: int, seed: int, frames: int, size: int) -> None:
    """The pink clips as MP4 + caption .txt (the same clips the pool encodes: same generator, same order)."""
    from kinema.data.shapes import random_training_clip
    from kinema.video.io import Video

    rng = np.random.default_rng(seed)
    for i in range(n):
        clip = random_training_clip(rng, frames, size, size, PINK)
        Video(clip.frames, 8.0).save(folder / f"pink_{i:03d}.mp4", crf=0)
        (folder / f"pink_{i:03d}.txt").write_text(clip.caption + "\n")


def merge_pools(a: dict, b: dict) -> dict:
    """Two pools from `build_pool` as one (caption ids of b shifted past a's captions)."""
    return {"latents": torch.cat([a["latents"], b["latents"]]),
            "caption_ids": torch.cat([a["caption_ids"], b["caption_ids"] + len(a["captions"])]),
            "text": torch.cat([a["text"], b["text"]]), "captions": a["captions"] + b["captions"], "empty": a["empty"]}


def build_run_pool(args, run_dir: Path, pipe) -> float:
    """Encode the pink (+ replay) clips into <run>/pool.pt, where the training loop finds its pool; returns seconds."""
    from kinema.train.common import atomic_save
    from kinema.train.dit import build_pool

    t0 = time.perf_counter()
    s = pipe.defaults
    pool = build_pool(pipe.vae, pipe.text_encoder, args.clips, args.seed + 1, s.frames, s.height, colours=PINK)
    if args.replay:
        other = build_pool(pipe.vae, pipe.text_encoder, args.replay, args.seed + 2, s.frames, s.height)
        pool = merge_pools(pool, other)
    atomic_save(pool, run_dir / "pool.pt")
    return time.perf_counter() - t0


def budget_hooks(budget_s: float, t_start: float, train_args: argparse.Namespace, info: dict):
    """Fit --steps to the budget from the speed between the first two checkpoints (so the learning-rate schedule
    completes), and stop at a checkpoint when the next one would end past the budget."""
    from kinema.train.dit import TrainHooks

    marks: list[tuple[int, float]] = []

    def on_checkpoint(out: Path, step: int, dit, ema) -> None:
        now = time.perf_counter() - t_start
        marks.append((step, now))
        info.update(steps=step, train_seconds=round(now, 1))
        if len(marks) < 2:
            if now >= budget_s:
                raise BudgetSpent
            return
        (s0, t0), (s1, t1) = marks[-2], marks[-1]
        per_step = (t1 - t0) / (s1 - s0)
        if len(marks) == 2:
            train_args.steps = info["fitted_steps"] = max(step, step + int((budget_s - now) / per_step))
            logging.info("budget %.1f min: %.2f s/step -> %d steps", budget_s / 60, per_step, train_args.steps)
        if step < train_args.steps and now + per_step * min(train_args.ckpt_every, train_args.steps - step) \
                > budget_s:
            raise BudgetSpent

    return TrainHooks(on_checkpoint=on_checkpoint)


def train(args, run_dir: Path, model_dir: Path) -> dict:
    """The LoRA run; returns steps, seconds and the final loss."""
    from kinema.train import dit as train_dit
    from kinema.train import lora as train_lora

    argv = ["--model", str(model_dir), "--out", str(run_dir), "--lora-rank", str(args.rank), "--lora-alpha",
            str(args.alpha), "--lr", str(args.lr), "--batch", str(args.batch), "--steps", "1000000",
            "--ckpt-every", str(args.ckpt_every), "--pool", str(args.clips + args.replay), "--threads",
            str(args.threads), "--seed", str(args.seed)]
    config, train_args = train_lora.parse_args(argv)
    info: dict = {}
    t_start = time.perf_counter()
    hooks = train_lora.lora_hooks(config, args.seed, str(model_dir),
                                  budget_hooks(args.minutes * 60, t_start, train_args, info))
    try:
        train_dit.train(train_args, hooks)
    except BudgetSpent:
        logging.info("training budget spent at step %d", info["steps"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(x)["loss"] for x in lines[-20:]]
    return {**info, "final_loss": float(np.mean(losses)), "adapter": str(run_dir / train_lora.ADAPTER_FILE)}


def evaluate(args, model_dir: Path, prompts: list[str], name: str, out: Path, lora: list) -> dict:
    """kinema eval on a prompt list (the judge also knows pink); returns the seen-split summary."""
    from kinema.eval.run import run_eval

    prompt_file = out / f"prompts_{name}.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    eval_args = argparse.Namespace(model=str(model_dir), prompts=str(prompt_file), seeds=args.seeds,
                                   steps=args.eval_steps, guidance=None, batch=16, device="cpu", image=False,
                                   vae_recon=False, json=None, lora=lora, judge_colours=PINK)
    result, _ = run_eval(eval_args)
    return result["generated"]["seen"]


def vae_ceiling(args, pipe, prompts: list[str]) -> float:
    """Colour adherence of the VAE's reconstructions of real pink clips (what any DiT can reach at best)."""
    from kinema.data.shapes import EXTRA_COLOURS, parse_canonical
    from kinema.eval.run import judge_row, reconstruct_all

    scenes = [parse_canonical(p) for p in prompts]
    s = pipe.defaults
    with torch.no_grad():
        videos = reconstruct_all(pipe.vae, scenes, args.seeds, s.frames, s.height)
    rows = [judge_row(v, sc, EXTRA_COLOURS) for v, sc in zip(videos, scenes * args.seeds)]
    return float(np.mean([r["colour"] for r in rows]))


def table(results: dict, args) -> str:
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    lines = ["| prompts | n | colour, base | colour, + LoRA | change | shape base / LoRA | motion base / LoRA |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("pink", "pink (never seen)"), ("original", "original colours (seen prompts)")):
        base, lora = results[key]["base"], results[key]["lora"]
        change = 100 * (lora["colour"] - base["colour"])
        lines.append(f"| {label} | {lora['n']} | {pct(base['colour'])} | {pct(lora['colour'])} | {change:+.0f} | "
                     f"{pct(base['shape'])} / {pct(lora['shape'])} | {pct(base['motion'])} / {pct(lora['motion'])} |")
    t = results["training"]
    verdict = "PASS" if results["pass"] else "FAIL"
    return "\n".join([
        *lines, "",
        f"VAE ceiling (reconstructions of real pink clips): colour {pct(results['vae_pink_colour'])}",
        f"LoRA rank {args.rank}, alpha {args.alpha:g}, strength {args.strength:g}; {args.clips} pink + {args.replay} "
        f"original-colour clips; {t['steps']} steps x batch {args.batch} in {t['train_seconds'] / 60:.1f} min "
        f"(budget {args.minutes:g} min, {args.threads} threads); final loss {t['final_loss']:.3f}; pool encoding "
        f"{results['pool_seconds']:.0f} s",
        f"{verdict}: pink >= 80 % with the LoRA, original colours drop <= 5 points"])


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    import kinema
    from kinema.pipelines.loading import resolve_model_path

    out, model_dir = Path(args.out), resolve_model_path(args.model)
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    pipe = kinema.load_pipeline(model_dir)
    write_data(out / "data", args.clips, args.seed + 1, pipe.defaults.frames, pipe.defaults.height)
    pool_seconds = build_run_pool(args, run_dir, pipe)
    training = train(args, run_dir, model_dir)
    n = args.max_prompts or None
    lists = {"pink": pink_prompts()[:n], "original": seen_prompts()[:n]}
    results = {"args": vars(args), "training": training, "pool_seconds": pool_seconds,
               "vae_pink_colour": vae_ceiling(args, pipe, lists["pink"])}
    for key, prompts in lists.items():
        results[key] = {"base": evaluate(args, model_dir, prompts, key, out, []),
                        "lora": evaluate(args, model_dir, prompts, key, out, [(training["adapter"], args.strength)])}
    drop = results["original"]["base"]["colour"] - results["original"]["lora"]["colour"]
    results["pass"] = bool(results["pink"]["lora"]["colour"] >= 0.8 and drop <= 0.05 + 1e-9)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")
    print(table(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
