"""The `kinema` command.

    kinema generate "a red circle moving right on a black background" -o out.mp4
    kinema eval --model shapes --prompts kinema/eval/prompts/canonical.txt
    kinema train-vae --out runs/vae          kinema train --vae runs/vae/checkpoint.pt --out runs/dit
    kinema models

Bad input gives one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints the whole usage; we print one line
        raise UsageError(f"{self.prog}: error: {message}")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def _number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def _seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2^63), got {v}")
    return v


def check_writable(path: Path, suffixes: tuple[str, ...] = (".mp4",)) -> Path:
    """Fail before any work if the output cannot be written (wrong suffix, unwritable folder)."""
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"output {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"output {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".kinema-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    return path


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text-to-video")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.mp4", help="output .mp4 (written atomically)")
    p.add_argument("--model", default="shapes",
                   help="built-in model name, model folder (kinema, diffusers Wan, original Wan) or Wan DiT .safetensors")
    p.add_argument("--frames", type=_positive_int, help="frame count, 1 + 4k (default: the model's)")
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--guidance", type=_number, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--shift", type=_number, help="timestep shift of the sampling grid")
    p.add_argument("--sampler", help="euler, heun or unipc (default: the model's)")
    p.add_argument("--schedule", choices=["uniform", "diffusers", "wan"],
                   help="time grid: uniform, or diffusers' / the original Wan's UniPC grid (default: the model's)")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--fps", type=_number)
    p.add_argument("--image", help="first frame (png/jpg): image-to-video")
    p.add_argument("--last-image", help="last frame (png/jpg): keyframe conditioning")
    p.add_argument("--codec", default="h264", choices=["h264", "h265"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights and compute dtype (float32 default; bfloat16 for large Wan models on a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_generate(args) -> int:
    out = check_writable(Path(args.output))
    from tqdm import tqdm

    import kinema
    from kinema.video.image import load_image

    images = {k: load_image(v) for k, v in (("image", args.image), ("last_image", args.last_image)) if v}

    t0 = time.perf_counter()
    import torch

    pipe = kinema.load_pipeline(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    settings = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                    guidance=args.guidance, shift=args.shift, sampler=args.sampler, schedule=args.schedule,
                    seed=args.seed, fps=args.fps, negative_prompt=args.negative_prompt)
    pipe.settings(**settings)  # validate before loading the text encoder
    bar = tqdm(total=None, desc="denoising", unit="step", disable=args.quiet, leave=False)

    def progress(i, n):
        bar.total = n
        bar.update(1)

    video = pipe(args.prompt, callback=progress, **images, **settings)
    bar.close()
    video.save(out, codec=args.codec)
    print(f"wrote {out} ({video.num_frames} frames, {video.fps:g} fps) in {time.perf_counter() - t0:.1f}s")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="generate a prompt list and judge it (colour, shape, motion, background)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--prompts", required=True, help="text file, one canonical prompt per line")
    p.add_argument("--seeds", type=_positive_int, default=2, help="seeds per prompt")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--guidance", type=_number)
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--vae-recon", action="store_true",
                   help="also judge VAE reconstructions of real clips of the same prompts (the VAE's ceiling)")
    p.add_argument("--json", help="write the results as JSON here")


def cmd_eval(args) -> int:
    from kinema.eval.run import main_eval

    return main_eval(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kinema", description="Text-to-video with a causal video VAE and a flow-matching DiT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_generate(sub)
    add_eval(sub)
    sub.add_parser("models", help="list the built-in models")
    for name, help_ in (("train-vae", "train the video VAE on the shapes world"),
                        ("train", "train the DiT on cached latents")):
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("train-vae", "train"):  # these own their flags
        from kinema.train import dit, vae

        return (vae if argv[0] == "train-vae" else dit).main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "eval":
        return cmd_eval(args)
    from kinema.pipelines.loading import builtin_models

    print("\n".join(builtin_models()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return dispatch(argv)
    except UsageError as e:
        print(f"kinema: error: {e}" if not str(e).startswith("kinema") else f"{e}", file=sys.stderr)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"kinema: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("kinema: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
