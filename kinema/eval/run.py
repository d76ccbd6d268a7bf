"""`kinema eval`: generate each prompt of a list with several seeds and judge what the videos show.

Prompts are in the shapes world's canonical form, so the scene they ask for is known; the judge reads colour,
shape, motion and background off the frames, plus temporal-consistency figures. Seen and held-out
(colour, shape) pairs are reported separately. `--vae-recon` also judges the VAE's reconstructions of real clips
of the same scenes: the ceiling the VAE sets on any DiT. Other modes: `--image` (image-to-video: first frame given,
its PSNR reported), `--keyframes` (first and last frames of a rendered clip given, PSNR of both ends) and `--extend`
(generate, extend with kinema extend, measure window seams and colour drift: kinema.eval.extension).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from kinema.atomic import temp_beside
from kinema.data.shapes import COLOURS, EXTRA_COLOURS, Scene, parse_canonical, render_clip
from kinema.eval.judge import consistency, judge_clip, motion_matches
from kinema.eval.vae import reconstruction_psnr

log = logging.getLogger(__name__)
ATTRIBUTES = ("colour", "shape", "motion", "background")
CONSISTENCY = ("found_fraction", "background_flicker", "colour_stability", "size_stability", "path_straightness")


def load_prompts(path: str | Path) -> list[tuple[str, Scene]]:
    """(prompt, scene) for each non-blank, non-comment line; every prompt must be in canonical form."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        scene = parse_canonical(line)
        if scene is None:
            raise ValueError(f"{path}:{n}: not a canonical shapes-world prompt: {line!r}")
        out.append((line, scene))
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def judge_row(frames: np.ndarray, scene: Scene, extra_colours: dict | None = None) -> dict:
    """What the judge sees in one video, and whether each attribute matches the scene."""
    j = judge_clip(frames, extra_colours)
    row = {"held_out": scene.held_out, "asked": scene.__dict__.copy(),
           "seen": {a: getattr(j, a) for a in ATTRIBUTES}}
    row.update({a: getattr(j, a) == getattr(scene, a) for a in ("colour", "shape", "background")})
    row["motion"] = motion_matches(scene.motion, j.motion)
    row["all"] = all(row[a] for a in ATTRIBUTES)
    row.update({k: float(v) for k, v in consistency(j, frames).items()})
    return row


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for split, sel in (("seen", False), ("held-out", True)):
        part = [r for r in rows if r["held_out"] == sel]
        if not part:
            continue
        s = {"n": len(part), **{a: float(np.mean([r[a] for r in part])) for a in (*ATTRIBUTES, "all")}}
        for k in CONSISTENCY:
            vals = [r[k] for r in part if k in r and not math.isnan(r[k])]
            s[k] = float(np.mean(vals)) if vals else float("nan")
        out[split] = s
    return out


def format_table(summary: dict, title: str) -> str:
    head = "| split | n | colour | shape | motion | background | all four | found | bg flicker | colour std | " \
           "size CV | straightness |"
    lines = [f"**{title}**", "", head, "|" + "---|" * 12]
    for split, s in summary.items():
        pct = " | ".join(f"{100 * s[a]:.0f} %" for a in (*ATTRIBUTES, "all"))
        rest = " | ".join(f"{s[k]:.2f}" for k in CONSISTENCY)
        lines.append(f"| {split} | {s['n']} | {pct} | {rest} |")
    return "\n".join(lines)


def generate_all(pipe, prompts: list[str], seeds: int, batch: int, stream: bool = False,
                 **settings) -> list[np.ndarray]:
    """Videos for every (seed k, prompt i), with seed 1000 k + i whatever the batch size. `stream`: sampled chunk
    by chunk with a clean past (causal models, as `kinema generate --stream`)."""
    jobs = [(p, 1000 * k + i) for k in range(seeds) for i, p in enumerate(prompts)]
    videos = []
    for start in range(0, len(jobs), batch):
        texts, sds = [p for p, _ in jobs[start:start + batch]], [sd for _, sd in jobs[start:start + batch]]
        if stream:
            from kinema.pipelines.stream import stream_video

            video = torch.cat(list(stream_video(pipe, texts, sds, **settings)), dim=2)   # (B, 3, T, H, W)
            videos += [((v.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for v in video]
        else:
            videos += [v.frames for v in pipe.generate(texts, seeds=sds, **settings)]
        log.info("generated %d / %d", len(videos), len(jobs))
    return videos


@torch.no_grad()
def reconstruct_all(vae, scenes: list[Scene], seeds: int, frames: int, size: int) -> list[np.ndarray]:
    """VAE reconstructions of real rendered clips of each scene."""
    out = []
    for k in range(seeds):
        for i, scene in enumerate(scenes):
            clip = render_clip(scene, np.random.default_rng(10_000 + 1000 * k + i), frames, size, size)
            x = torch.from_numpy(clip.frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
            y = vae.decode(vae.encode(x))
            out.append(((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy())
    return out


def generate_from_images(pipe, prompts: list[str], scenes: list[Scene], seeds: int, **settings):
    """Image-to-video: each prompt's first frame is rendered from its scene, then animated by the model.
    Returns the videos and the PSNR (dB) of each first output frame against its input image."""
    videos, psnrs = generate_from_keyframes(pipe, prompts, scenes, seeds, last=False, **settings)
    return videos, psnrs["first"]


def generate_from_keyframes(pipe, prompts: list[str], scenes: list[Scene], seeds: int, last: bool = True,
                            **settings) -> tuple[list[np.ndarray], dict[str, list[float]]]:
    """Each prompt's scene is rendered as a real clip of the output's length; its first frame (and, with `last`,
    its last frame) is given to the model. Returns the videos and {"first": [...], "last": [...]}: the PSNR (dB) of
    each output's first / last frame against the given image ("last" empty without `last`)."""
    from kinema.eval.vae import psnr

    s = pipe.settings(**settings)
    as_tensor = lambda a: torch.from_numpy(a).float().div(127.5).sub(1)  # noqa: E731
    videos, psnrs = [], {"first": [], "last": []}
    for k in range(seeds):
        for i, (prompt, scene) in enumerate(zip(prompts, scenes)):
            real = render_clip(scene, np.random.default_rng(20_000 + 1000 * k + i), s.frames, s.height,
                               s.width).frames
            end = real[-1] if last else None
            frames = pipe.generate([prompt], seeds=[1000 * k + i], image=real[0], last_image=end, **settings)[0].frames
            videos.append(frames)
            psnrs["first"].append(psnr(as_tensor(frames[0]), as_tensor(real[0])))
            if last:
                psnrs["last"].append(psnr(as_tensor(frames[-1]), as_tensor(end)))
    return videos, psnrs


def judge_colours(scenes: list[Scene], names=()) -> dict[str, tuple[int, int, int]]:
    """The extra colours the judge must know: those the prompts ask for, and `names`."""
    asked = [s.colour for s in scenes if s.colour not in COLOURS]
    unknown = [n for n in names if n not in EXTRA_COLOURS and n not in COLOURS]
    if unknown:
        raise ValueError(f"unknown judge colours {unknown}; extra colours: {list(EXTRA_COLOURS)}")
    return {n: EXTRA_COLOURS[n] for n in (*asked, *names) if n in EXTRA_COLOURS}


MODE_PROMPTS = {"text-to-video": "canonical.txt", "image-to-video": "i2v.txt", "first+last frame": "i2v.txt",
                "extension": "extend.txt"}


def eval_mode(args) -> str:
    """Which evaluation `args` asks for: a key of MODE_PROMPTS."""
    if getattr(args, "extend", None):
        if getattr(args, "vae_recon", False):
            raise ValueError("--vae-recon does not apply to --extend")
        return "extension"
    if getattr(args, "keyframes", False):
        return "first+last frame"
    return "image-to-video" if getattr(args, "image", False) else "text-to-video"


def default_prompts(mode: str) -> Path:
    """The packaged prompt list of an evaluation mode."""
    return Path(__file__).parent / "prompts" / MODE_PROMPTS[mode]


def _extension_eval(args, pipe, texts, extra, settings, result, title) -> tuple[dict, str]:
    """`kinema eval --extend`: generate, extend and measure seams and colour drift (kinema.eval.extension)."""
    from kinema.eval.extension import extend_all, format_extension, summarise_extension

    frames, context = args.extend, getattr(args, "context", None) or 5
    match, method = getattr(args, "colour_match", 1.0), getattr(args, "colour_method", None)
    rows = extend_all(pipe, texts, args.seeds, frames, context, extra, match, method, **settings)
    result.update({"frames": frames, "context": context, "colour_match": match, "colour_method": method,
                   "summary": summarise_extension(rows), "videos": rows})
    if args.json:
        _write_json(Path(args.json), result)
    s = result["settings"]
    return result, format_extension(rows, result["summary"], f"{title}: {s['frames']} -> {frames} frames, "
                                                             f"context {context}, colour match {match:g}")


def run_eval(args) -> tuple[dict, str]:
    """Generate and judge the prompt list; returns the results and a markdown report.
    `args.lora` (optional): [(file, strength)] adapters loaded on the DiT; `args.judge_colours` (optional): extra
    colour names the judge may answer (colours the prompts ask for are added). Modes (`eval_mode`): text-to-video;
    `args.image` image-to-video; `args.keyframes` first + last frame given; `args.extend` (frames) extension. Without
    `args.prompts`, each mode has its packaged list (MODE_PROMPTS)."""
    import kinema

    mode = eval_mode(args)
    prompts = load_prompts(getattr(args, "prompts", None) or default_prompts(mode))
    pipe = kinema.load_pipeline(args.model, device=args.device)
    loras = [(str(path), float(strength)) for path, strength in getattr(args, "lora", None) or []]
    for path, strength in loras:
        pipe.load_lora(path, strength)
    settings = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance),
                                  ("refine", getattr(args, "refine", None))) if v is not None}
    s = pipe.settings(**settings)
    texts, scenes = [p for p, _ in prompts], [sc for _, sc in prompts]
    extra = judge_colours(scenes, getattr(args, "judge_colours", None) or ())
    result = {"model": str(args.model), "mode": mode, "settings": s.to_dict(), "seeds": args.seeds, "lora": loras}
    with_lora = "".join(f" + LoRA {Path(path).name}:{strength:g}" for path, strength in loras)
    title = f"{mode} ({args.model}{with_lora}, {s.steps} steps, guidance {s.guidance}" \
            f"{f', refine {s.refine:g}' if s.refine else ''})"
    if getattr(args, "stream", False):
        if mode != "text-to-video":
            raise ValueError("--stream evaluates text-to-video only")
        title += ", streamed"
    if mode == "extension":
        return _extension_eval(args, pipe, texts, extra, settings, result, title)
    if mode == "text-to-video":
        videos, ends = generate_all(pipe, texts, args.seeds, args.batch, getattr(args, "stream", False),
                                    **settings), {}
    else:
        videos, ends = generate_from_keyframes(pipe, texts, scenes, args.seeds, mode == "first+last frame",
                                               **settings)
    rows = [judge_row(v, sc, extra) for v, sc in zip(videos, scenes * args.seeds)]
    result["generated"] = summarise(rows)
    report = [format_table(result["generated"], title)]
    for end, values in ends.items():
        if values:
            result[f"{end}_frame_psnr"] = {"mean": float(np.mean(values)), "min": float(np.min(values))}
            report.append(f"{end} output frame vs {'input' if end == 'first' else 'last'} image: "
                          f"{np.mean(values):.2f} dB mean, {np.min(values):.2f} dB min")
    if args.vae_recon:
        recon = reconstruct_all(pipe.vae, scenes, args.seeds, s.frames, s.height)
        result["vae_recon"] = summarise([judge_row(v, sc, extra) for v, sc in zip(recon, scenes * args.seeds)])
        report.append(format_table(result["vae_recon"], "VAE reconstructions of real clips (ceiling)"))
        r = result["vae_psnr_held_out"] = reconstruction_psnr(pipe.vae, n=48, frames=s.frames, size=s.height)
        report.append(f"VAE reconstruction PSNR on 48 held-out clips: {r['psnr_mean']:.2f} dB "
                      f"(min {r['psnr_min']:.2f} dB)")
    if args.json:
        _write_json(Path(args.json), result)
    return result, "\n\n".join(report)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path, suffix="")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
