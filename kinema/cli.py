"""The `kinema` command.

    kinema generate "a red circle moving right on a black background" -o out.mp4
    kinema generate "a blue square" -o clip.gif --saturation 1.3 --lut film.cube --upscale 2 --interpolate
    kinema generate --from out.json -o frames/ --seed 3       (re-run a recorded run, with overrides)
    kinema eval --model shapes --prompts kinema/eval/prompts/canonical.txt
    kinema eval --model shapes --keyframes        (or --image, --extend 65: image-to-video, keyframes, extension)
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


def _whole(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None


def _positive_int(s: str) -> int:
    v = _whole(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def _count(s: str) -> int:
    v = _whole(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {v}")
    return v


def _number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def _strength(s: str) -> float:
    v = _number(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a strength in [0, 1], got {v}")
    return v


def _seed(s: str) -> int:
    v = _whole(s)
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


GENERATE_EPILOG = """\
output: -o decides the format: NAME.mp4 (H.264 by default, --codec h265 for HEVC; --crf sets quality),
NAME.gif (looping GIF), or a folder path ending in / (frame_0000.png, frame_0001.png, ...). Every write is atomic,
and a sidecar NAME.json (frames/ -> frames.json) records prompt, seed, model, settings and post-processing;
`kinema generate --from NAME.json` re-runs it (flags given with --from override the file).
post-processing, always in this order: contrast, brightness, saturation, temperature, LUT, sharpen, upscale,
interpolate. Upscaled frames are limited to 4096 px per side."""

GEN_FLAGS = ("frames", "height", "width", "steps", "guidance", "guidance_2", "shift", "sampler", "schedule",
             "negative_prompt", "seed", "fps", "refine", "context_noise", "context_noise_2", "continue_guidance",
             "continue_guidance_2")
DTYPES = ("float32", "bfloat16", "float16")
POST_FLAGS = ("contrast", "brightness", "saturation", "temperature", "lut", "sharpen", "sharpen_radius", "upscale",
              "upscale_method", "interpolate")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text-to-video", epilog=GENERATE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="what to show (optional with --from: taken from the run file)")
    p.add_argument("-o", "--output", help="out.mp4 (default), out.gif, or a folder ending in / for PNG frames")
    p.add_argument("--from", dest="from_run", metavar="RUN.json",
                   help="re-run the generation recorded in a sidecar JSON; explicit flags override it")
    p.add_argument("--model", help="built-in model name (default: shapes), model folder (kinema, diffusers Wan, "
                                   "original Wan) or Wan DiT .safetensors")
    p.add_argument("--frames", type=_positive_int, help="frame count, 1 + 4k (default: the model's)")
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--guidance", type=_number, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guidance-2", type=_number,
                   help="two-expert models (Wan 2.2 A14B): the low-noise expert's scale (default: the model's)")
    p.add_argument("--shift", type=_number, help="timestep shift of the sampling grid")
    p.add_argument("--sampler", help="euler, heun or unipc (default: the model's)")
    p.add_argument("--schedule", choices=["uniform", "diffusers", "wan"],
                   help="time grid: uniform, or diffusers' / the original Wan's UniPC grid (default: the model's)")
    p.add_argument("--negative-prompt")
    p.add_argument("--refine", type=_number, metavar="T",
                   help="causal models: stream the clip, re-noise it to time T (e.g. 0.5) and sample it whole from "
                        "there (default: the model's; 0 = sample it whole from noise)")
    p.add_argument("--seed", type=_seed, help="default 0")
    p.add_argument("--fps", type=_number, help="frame rate of the generated clip (x2 with --interpolate)")
    p.add_argument("--save-latents", help="write the sampled latents here (.safetensors) before decoding")
    p.add_argument("--image", help="first frame (png/jpg): image-to-video")
    p.add_argument("--last-image", help="last frame (png/jpg): keyframe conditioning")
    p.add_argument("--codec", choices=["h264", "h265"], help=".mp4 codec (default h264; yuv420p)")
    p.add_argument("--crf", type=_crf, help=".mp4 quality, 0 (lossless) .. 51 (worst); default 18")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", choices=DTYPES,
                   help="weights and compute dtype (float32 default; bfloat16 for large Wan models on a GPU)")
    p.add_argument("--offload", choices=["auto", "none", "model", "sequential"], default="auto",
                   help="GPU memory plan: keep everything on the GPU, move whole models there in turn, or stream the "
                        "DiT block by block (default auto: the fastest that fits the free memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stream", action="store_true",
                   help="causal models: sample chunk by chunk and write frames as they are made (any length)")
    p.add_argument("--window", type=_positive_int, default=4,
                   help="--stream: past latent frames each chunk attends to (default 4)")
    p.add_argument("--chunk", type=_positive_int, default=1, help="--stream: latent frames per chunk (default 1)")
    p.add_argument("--context-noise", type=_number, metavar="T",
                   help="--stream: the past each chunk attends to noised to time T, for models trained with noised "
                        "conditions (default: the model's; 0 = clean)")
    p.add_argument("--context-noise-2", type=_number, metavar="T",
                   help="--stream, two-expert models: the low-noise expert's context noise (default: the model's)")
    add_continue_guidance(p)
    p.add_argument("--colour-match", type=_strength, default=1.0, metavar="STRENGTH",
                   help="--stream: colour-match every frame after the model's own length to those first frames, "
                        "against colour drift in long videos (default 1; 0: off)")
    add_colour_method(p, "palette")
    p.add_argument("--lora", action="append", type=_lora_spec, metavar="FILE[:STRENGTH]",
                   help="LoRA adapter .safetensors (kinema, diffusers or ComfyUI/musubi layout), strength default 1; "
                        "repeat for several")
    add_post_flags(p)


def add_continue_guidance(p) -> None:
    p.add_argument("--continue-guidance", type=_number, metavar="SCALE",
                   help="causal streaming: the guidance of the chunks after the model's own clip length, which "
                        "continue a past rather than set up the prompt's scene (two-expert models: the high-noise "
                        "expert's; default: the model's; 1 = off)")
    p.add_argument("--continue-guidance-2", type=_number, metavar="SCALE",
                   help="two-expert models: the low-noise expert's guidance in those chunks (default: the model's)")


def add_colour_method(p, default: str) -> None:
    p.add_argument("--colour-method", choices=("palette", "histogram"), default=default,
                   help="how --colour-match matches: 'palette', one affine colour map per frame that carries its "
                        "main colours onto the reference's (keeps edges and sizes); 'histogram', per-channel "
                        f"histogram matching (default {default}: measured in docs/models/shapes.md)")


def add_post_flags(p) -> None:
    g = p.add_argument_group("post-processing (applied in this order; defaults change nothing)")
    g.add_argument("--contrast", type=_number, metavar="X", help="around mid-grey, 1 = unchanged; [0, 4]")
    g.add_argument("--brightness", type=_number, metavar="X", help="multiplier, 1 = unchanged; [0, 4]")
    g.add_argument("--saturation", type=_number, metavar="X", help="0 = greyscale, 1 = unchanged; [0, 4]")
    g.add_argument("--temperature", type=_number, metavar="T", help=">0 warmer, <0 cooler, 0 = unchanged; [-1, 1]")
    g.add_argument("--lut", metavar="FILE.cube", help="3D LUT colour grade (Adobe/Resolve .cube)")
    g.add_argument("--sharpen", type=_number, metavar="AMOUNT", help="unsharp mask, 0 = off, 0.5 moderate; [0, 5]")
    g.add_argument("--sharpen-radius", type=_number, metavar="PX", help="unsharp-mask blur sigma (default 1)")
    g.add_argument("--upscale", type=int, choices=[1, 2, 4], help="x2 or x4 size (1 = off); <= 4096 px per side")
    g.add_argument("--upscale-method", choices=["lanczos", "bicubic"], help="default lanczos")
    g.add_argument("--interpolate", action=argparse.BooleanOptionalAction,
                   help="x2 frame rate: a blended frame between each pair (T -> 2T-1 frames, fps x 2)")


def _lora_spec(s: str) -> tuple[str, float]:
    """FILE or FILE:STRENGTH -> (FILE, strength); the strength defaults to 1."""
    path, sep, tail = s.rpartition(":")
    if sep and path:
        try:
            return path, _number(tail)
        except argparse.ArgumentTypeError:
            if path.endswith(".safetensors"):
                raise argparse.ArgumentTypeError(f"bad LoRA strength {tail!r} in {s!r}") from None
    return s, 1.0


def _checked_loras(items, source: str | None) -> list[tuple[str, float]]:
    """[(absolute path, strength)], each file present (checked before any model is loaded)."""
    out = []
    for item in items:
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) \
            and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)
        if not ok:
            raise ValueError(f"run file {source}: bad lora entry {item!r}")
        path = Path(item[0]).expanduser()
        if not path.is_file():
            raise UsageError(f"LoRA file {item[0]} does not exist")
        out.append((str(path.resolve()), float(item[1])))
    return out


def _crf(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if not 0 <= v <= 51:
        raise argparse.ArgumentTypeError(f"crf must be in [0, 51], got {v}")
    return v


def _abs_path(p: str | None) -> str | None:
    return None if p is None else str(Path(p).expanduser().resolve())


def _checked_settings(d: dict, source: str) -> dict:
    """GenerationSettings fields from a run file, type-checked (ValueError naming the file)."""
    from dataclasses import fields

    from kinema.pipelines.text_to_video import GenerationSettings

    kinds = {f.name: type(f.default) for f in fields(GenerationSettings)}
    for k, v in d.items():
        ok = {int: (int,), float: (int, float), str: (str,)}.get(kinds.get(k), ())
        if k not in kinds or not isinstance(v, ok) or isinstance(v, bool):
            raise ValueError(f"run file {source}: bad setting {k}={v!r}")
    return d


def resolve_run(args) -> dict:
    """The run to do: the --from file (if any) overridden by the flags given, with defaults filled in."""
    from kinema.video.export import read_run

    run = read_run(args.from_run) if args.from_run else {}
    prompt = args.prompt if args.prompt is not None else run.get("prompt")
    if prompt is None:
        raise UsageError("kinema generate: error: the following arguments are required: prompt (or --from RUN.json)")
    settings = _checked_settings(dict(run.get("settings", {})), args.from_run)
    settings.update({k: getattr(args, k) for k in GEN_FLAGS if getattr(args, k) is not None})
    settings.setdefault("seed", 0)
    post = dict(run.get("post", {}))
    post.update({k: getattr(args, k) for k in POST_FLAGS if getattr(args, k) is not None})
    if args.lut is not None:
        post["lut"] = _abs_path(args.lut)
    model = args.model or run.get("model") or "shapes"
    if Path(model).expanduser().exists():
        model = _abs_path(model)
    images = {k: _abs_path(getattr(args, k)) if getattr(args, k) else run.get(k) for k in ("image", "last_image")}
    recorded = run.get("output", {}) if isinstance(run.get("output"), dict) else {}
    codec = args.codec or recorded.get("codec") or "h264"
    crf = args.crf if args.crf is not None else recorded.get("crf", 18)
    dtype = args.dtype or run.get("dtype") or "float32"
    loras = _checked_loras(args.lora if args.lora is not None else run.get("lora") or [], args.from_run)
    if codec not in ("h264", "h265") or type(crf) is not int or not 0 <= crf <= 51 or dtype not in DTYPES:
        raise ValueError(f"run file {args.from_run}: bad codec {codec!r}, crf {crf!r} or dtype {dtype!r}")
    return {"prompt": prompt, "model": model, "settings": settings, "post": post, **images, "dtype": dtype,
            "codec": codec, "crf": crf, "lora": loras}


def check_output(raw: str, mp4_flag: str | None = None) -> tuple[Path, str]:
    """(path, kind) of the requested output, checked before any work; UsageError if it cannot be written."""
    from kinema.video.export import FILE_SUFFIXES, is_frames_folder, output_kind, sidecar_path

    try:
        kind = output_kind(raw)
    except ValueError as e:
        raise UsageError(str(e)) from None
    path = Path(raw)
    if mp4_flag and kind != "mp4":
        raise UsageError(f"{mp4_flag} applies to .mp4 output, not {raw}")
    if kind == "frames":
        if path.exists() and not is_frames_folder(path):
            raise UsageError(f"output folder {path} exists and holds more than PNG frames")
        check_writable(sidecar_path(raw), (".json",))
    else:
        if path.is_dir():
            raise UsageError(f"output {path} is a folder (end it with / to write PNG frames into it)")
        check_writable(path, FILE_SUFFIXES)
        if sidecar_path(raw).is_dir():
            raise UsageError(f"sidecar {sidecar_path(raw)} is a folder")
    return path, kind


def progress_bar(quiet: bool):
    """A tqdm bar over denoising steps and the sampler callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc="denoising", unit="step", disable=quiet, leave=False)

    def progress(i, n):
        if bar.total != n:
            bar.reset(total=n)
        bar.update(1)
    return bar, progress


def cmd_generate(args) -> int:
    run = resolve_run(args)
    raw_out = args.output or "out.mp4"  # a trailing "/" (a frames folder) matters: keep the string
    out, kind = check_output(raw_out, "--codec" if args.codec else "--crf" if args.crf is not None else None)
    import kinema
    from kinema.video.export import save_output
    from kinema.video.image import load_image
    from kinema.video.lut import load_cube
    from kinema.video.post import PostSettings, check_upscale, postprocess

    post = PostSettings.from_dict(run["post"])
    lut = load_cube(post.lut) if post.lut else None
    images = {k: load_image(run[k]) for k in ("image", "last_image") if run[k]}

    t0 = time.perf_counter()
    import torch

    pipe = kinema.load_pipeline(run["model"], device=args.device, dtype=getattr(torch, run["dtype"]),
                                offload=args.offload)
    for path, strength in run["lora"]:
        pipe.load_lora(path, strength)
    s = pipe.settings(**run["settings"])  # validate before loading the text encoder
    check_upscale(s.height, s.width, post.upscale)
    sidecar = {"prompt": run["prompt"], "seed": s.seed, "model": run["model"], "model_name": pipe.name,
               "settings": s.to_dict(), "post": post.to_dict(), "image": run["image"],
               "last_image": run["last_image"], "dtype": run["dtype"], "lora": run["lora"],
               "kinema_version": kinema.__version__}
    if args.stream:
        if s.refine:
            raise UsageError("--refine re-samples a whole clip; it does not apply to --stream")
        video = generate_streamed(pipe, run, s, args, post, lut, images, sidecar)
        print(f"wrote {out} ({video.num_frames} frames, {video.fps:g} fps) in {time.perf_counter() - t0:.1f}s")
        return 0
    bar, progress = progress_bar(args.quiet)
    video = pipe(run["prompt"], callback=progress, save_latents=args.save_latents, **images, **s.to_dict())
    bar.close()
    video = postprocess(video, post, lut)
    save_output(video, raw_out, codec=run["codec"], crf=run["crf"], run=sidecar)
    print(f"wrote {out}{os.sep if kind == 'frames' else ''} ({video.num_frames} frames, {video.fps:g} fps) "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


def generate_streamed(pipe, run, s, args, post, lut, images, sidecar):
    """--stream: each latent chunk is sampled, decoded, post-processed and encoded into the MP4 as it comes; the
    MP4 and its sidecar appear when the video is complete. Returns the whole video as written (for the summary)."""
    import numpy as np

    from kinema.pipelines.stream import colour_anchored, stream_video
    from kinema.video.export import sidecar_path, sidecar_text
    from kinema.video.io import Mp4Writer, Video, atomic_file
    from kinema.video.post import postprocess

    if post.interpolate or images.get("last_image") is not None or args.save_latents:
        raise UsageError("--stream cannot interpolate frames, take a --last-image or save latents: drop one")
    path = args.output or "out.mp4"
    if Path(path).suffix.lower() != ".mp4":
        raise UsageError("--stream writes an .mp4 file")
    t0, pieces = time.perf_counter(), []
    chunks = stream_video(pipe, [run["prompt"]], [s.seed], images.get("image"), args.chunk, args.window, **s.to_dict())
    sidecar = {**sidecar, "stream": {"chunk": args.chunk, "window": args.window, "colour_match": args.colour_match,
                                     "colour_method": args.colour_method}}
    with atomic_file(sidecar_path(path)) as side, Mp4Writer(path, s.fps, run["codec"], run["crf"], sidecar) as mp4:
        for frames in colour_anchored(chunks, pipe.defaults.frames, args.colour_match, args.colour_method):
            pieces.append(postprocess(Video.from_tensor(frames[0], s.fps), post, lut).frames)
            mp4.write(pieces[-1])
            if len(pieces) == 1 and not args.quiet:
                print(f"first frame after {time.perf_counter() - t0:.2f}s", flush=True)
        video = Video(np.concatenate(pieces), s.fps, sidecar)
        Path(side).write_text(sidecar_text(path, s.fps, video.frames.shape[:3], run["codec"], run["crf"], sidecar))
    return video


def add_extend(sub) -> None:
    p = sub.add_parser("extend", help="continue a video, window after window, to any length")
    p.add_argument("video", help="the video to continue (mp4/mov/webm/mkv)")
    p.add_argument("prompt")
    p.add_argument("--frames", type=_positive_int, required=True, help="total frames of the result (1 + 4k)")
    p.add_argument("-o", "--output", default="extended.mp4", help=".mp4, .gif or a folder/ for PNG frames")
    p.add_argument("--model", default="shapes")
    p.add_argument("--context", type=_positive_int, default=5, help="frames each window continues from (1 + 4j)")
    p.add_argument("--blend", type=_count, default=4,
                   help="input frames before the join faded into their VAE reconstruction, so the first generated "
                        "frame does not jump (0: keep every input frame as it was)")
    p.add_argument("--colour-match", type=_strength, default=1.0, metavar="STRENGTH",
                   help="colour-match the generated frames to the input's last frames, against colour drift (0: off; "
                        "lower it for a scene that should change colour)")
    add_colour_method(p, "histogram")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--guidance", type=_number)
    add_continue_guidance(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def cmd_extend(args) -> int:
    out, kind = check_output(args.output)
    import kinema
    from kinema.pipelines.extend import extend_video
    from kinema.video.export import save_output
    from kinema.video.io import read_video

    t0 = time.perf_counter()
    source = read_video(args.video)
    pipe = kinema.load_pipeline(args.model, device=args.device)
    bar, progress = progress_bar(args.quiet)
    settings = {k: getattr(args, k) for k in ("steps", "guidance", "continue_guidance", "continue_guidance_2")
                if getattr(args, k) is not None}
    video = extend_video(pipe, source, args.prompt, args.frames, args.context, args.seed, progress, args.blend,
                         args.colour_match, args.colour_method, **settings)
    bar.close()
    save_output(video, args.output, run={"extended": str(Path(args.video).resolve()), **video.metadata})
    print(f"wrote {out} ({video.num_frames} frames, {video.fps:g} fps) in {time.perf_counter() - t0:.1f}s")
    return 0


def add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode saved latents (kinema generate --save-latents) to a video")
    p.add_argument("latents", help=".safetensors written by --save-latents")
    p.add_argument("-o", "--output", default="decoded.mp4")
    p.add_argument("--model", help="model whose VAE decodes (default: the one recorded in the file)")
    p.add_argument("--tile", type=_positive_int, help="decode in spatial tiles of this many latent pixels")
    p.add_argument("--device", default="auto")


def cmd_decode(args) -> int:
    out, _ = check_output(args.output)
    import kinema
    from kinema.pipelines.latents import load_latents
    from kinema.vae.tiling import decode_tiled
    from kinema.video.export import save_output
    from kinema.video.io import Video

    latents, run = load_latents(args.latents)
    pipe = kinema.load_pipeline(args.model or run.get("model", "shapes"), device=args.device)
    z = latents.to(pipe.device, next(pipe.vae.parameters()).dtype)
    video = decode_tiled(pipe.vae, z, args.tile, args.tile // 4) if args.tile else pipe.decode(z)
    clip = Video.from_tensor(video[:1], run.get("fps", pipe.defaults.fps), {"decoded_from": args.latents})
    save_output(clip, args.output, run={"decoded_from": str(Path(args.latents).resolve()), **run})
    print(f"wrote {out} ({clip.num_frames} frames)")
    return 0


def add_experts(sub) -> None:
    p = sub.add_parser("experts", help="join a model and a low-noise expert into one two-expert model",
                       description="Write a two-expert model (Wan 2.2 A14B's design): HIGH's DiT denoises times "
                                   "t >= --boundary, LOW's below it (train one with kinema train --t-range 0,B).")
    p.add_argument("high", help="model folder whose text encoder, VAE, defaults and DiT (high noise) are kept")
    p.add_argument("low", help="model folder of the low-noise expert (same VAE)")
    p.add_argument("--boundary", type=float, required=True, help="the switch time, strictly between 0 and 1")
    p.add_argument("-o", "--output", required=True, help="new model folder")
    p.add_argument("--guidance-2", type=float,
                   help="the low-noise expert's default guidance scale (default: the model's guidance)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage of the DiT weights (float16: half the bytes; they load back as float32)")


def cmd_experts(args) -> int:
    import torch

    from kinema.pipelines.loading import join_experts

    if (Path(args.output) / "model.json").exists():
        raise UsageError(f"{args.output} already holds a model; choose a new folder")
    out = join_experts(args.high, args.low, args.boundary, args.output, getattr(torch, args.dtype),
                       guidance_2=args.guidance_2)
    print(f"wrote {out}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="generate a prompt list and judge it (colour, shape, motion, background)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--prompts", help="text file, one canonical prompt per line (default: the mode's list in "
                                      "kinema/eval/prompts: canonical.txt, i2v.txt or extend.txt)")
    p.add_argument("--seeds", type=_positive_int, default=2, help="seeds per prompt")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--guidance", type=_number)
    p.add_argument("--refine", type=_number, metavar="T",
                   help="causal models: stream each clip, re-noise it to time T and sample it whole from there")
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--device", default="auto")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--image", action="store_true",
                      help="image-to-video: animate each scene's rendered first frame (use prompts/i2v.txt)")
    mode.add_argument("--keyframes", action="store_true",
                      help="first + last frame: give a rendered clip's first and last frames; reports the PSNR of "
                           "both ends and the judge's adherence")
    mode.add_argument("--extend", type=_positive_int, nargs="?", const=65, metavar="FRAMES",
                      help="extension: generate each prompt, extend it to FRAMES (default 65) with kinema extend, "
                           "and measure window seams and colour drift")
    p.add_argument("--context", type=_positive_int, default=5, help="--extend: frames each window continues from")
    p.add_argument("--colour-match", type=_strength, default=1.0, metavar="STRENGTH",
                   help="--extend: strength of kinema extend's colour match to the input (0: off)")
    add_colour_method(p, "histogram")
    p.add_argument("--stream", action="store_true",
                   help="causal models: generate chunk by chunk with a clean past, as kinema generate --stream")
    p.add_argument("--vae-recon", action="store_true",
                   help="also judge VAE reconstructions of real clips of the same prompts (the VAE's ceiling)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--lora", action="append", type=_lora_spec, metavar="FILE[:STRENGTH]",
                   help="evaluate with this LoRA adapter loaded (repeat for several)")
    p.add_argument("--judge-colours", type=lambda s: tuple(c for c in s.split(",") if c), default=(),
                   metavar="NAMES", help="extra colours the judge may answer, e.g. pink (those the prompts name are "
                                         "added)")


def cmd_eval(args) -> int:
    from kinema.eval.run import run_eval

    args.lora = _checked_loras(args.lora or [], None)
    print(run_eval(args)[1])
    return 0


def add_cache(sub) -> None:
    p = sub.add_parser("cache", help="encode a video folder's latents and captions once, for kinema train --cache")
    p.add_argument("data", help="folder of videos/images with sidecar .txt captions or a metadata.jsonl/.csv")
    p.add_argument("--model", default="shapes", help="model whose VAE and text encoder encode (name or folder)")
    p.add_argument("--out", required=True, help="cache folder (an interrupted run resumes where it stopped)")
    p.add_argument("--frames", type=_positive_int, help="longest clip, 1 + 4k (default: the model's)")
    p.add_argument("--size", type=_positive_int, help="side of the square bucket (default: the model's height)")
    p.add_argument("--aspect-ratios", default="1", help="bucket aspect ratios W:H, comma-separated")
    p.add_argument("--frame-buckets", help="allowed clip lengths, comma-separated (default: every 1 + 4k)")
    p.add_argument("--fps", type=_number, help="resample clips to this frame rate (default: each file's own)")
    p.add_argument("--clips-per-video", type=_positive_int, default=1, help="evenly spaced clips from each video")
    p.add_argument("--shard-size", type=_positive_int, default=64, help="clips per shard")
    p.add_argument("--batch", type=_positive_int, default=8, help="clips per VAE call")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_cache(args) -> int:
    import kinema
    from kinema.data.latent_cache import build_cache
    from kinema.train.sources import video_config

    pipe = kinema.load_pipeline(args.model, device=args.device)
    args.frames, args.size = args.frames or pipe.defaults.frames, args.size or pipe.defaults.height
    cfg = video_config(args, pipe.vae, pipe.dit.config.patch_size[1])
    from tqdm import tqdm

    bar = tqdm(desc="shards", unit="shard", disable=args.quiet, leave=False)

    def progress(done, total):
        bar.total = total
        bar.update(1)
    m = build_cache(args.data, pipe, args.out, cfg, args.clips_per_video, args.shard_size, args.batch, progress)
    bar.close()
    print(f"cached {m['clips']} clips in {len(m['shards'])} shards ({m['encoded_shards']} encoded, "
          f"{m['reused_shards']} already there) to {args.out}; {len(m['skipped'])} files skipped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kinema", description="Text-to-video with a causal video VAE and a flow-matching DiT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_generate(sub)
    add_extend(sub)
    add_decode(sub)
    add_eval(sub)
    add_cache(sub)
    add_experts(sub)
    sub.add_parser("models", help="list the built-in models")
    sub.add_parser("lora", help="LoRA fine-tuning of the DiT: kinema lora train --help", add_help=False)
    for name, help_ in (("train-vae", "train the video VAE on the shapes world"),
                        ("train", "train the DiT on cached latents")):
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "lora":  # `kinema lora train ...` owns its flags
        from kinema.train import lora

        return lora.main(argv[1:])
    if argv and argv[0] in ("train-vae", "train"):  # these own their flags
        from kinema.train import dit, vae

        return (vae if argv[0] == "train-vae" else dit).main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "decode":
        return cmd_decode(args)
    if args.command == "extend":
        return cmd_extend(args)
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "cache":
        return cmd_cache(args)
    if args.command == "experts":
        return cmd_experts(args)
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
