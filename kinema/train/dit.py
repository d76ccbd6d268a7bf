"""Train the diffusion transformer by flow matching on cached VAE latents of the shapes world.

    kinema train --vae runs/vae/checkpoint.pt --out runs/dit --steps 4000 --batch 32

1. A pool of training clips is rendered, encoded once by the frozen VAE and the frozen text encoder, and cached in
   `<out>/pool.pt` (the DiT never pays for the VAE or the text encoder again). The VAE's per-channel latent
   statistics are measured on the pool and written into its config.
2. Flow matching: t ~ shift(logit-normal), x_t = (1 - t) x0 + t noise, loss = |v_pred - (noise - x0)|^2.
   A fraction of captions is dropped to the empty prompt so classifier-free guidance works.
   A fraction of samples is conditioned on given latent frames (the first; first and last; or the first few),
   as Wan2.2 TI2V does: those frames stay clean, their tokens get timestep 0, and the loss skips them. So one
   model does text-to-video, image-to-video, keyframes and extension.
3. AdamW, warmup + cosine, EMA, gradient clipping; loss logged per t-bin; atomic checkpoints; `--resume`.
   Each checkpoint also writes a loadable model folder `<out>/model` (EMA weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from einops import rearrange

from kinema.data.buckets import rank_slice
from kinema.data.shapes import random_caption, random_training_clip, random_training_scene, render_clip
from kinema.dit.model import DiT, DiTConfig
from kinema.flow.convention import TIMESTEP_SCALE, add_noise, velocity_target
from kinema.flow.schedule import logit_normal_times
from kinema.pipelines.loading import save_model
from kinema.pipelines.text_to_video import GenerationSettings
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.train import parallel, run_log, sources
from kinema.train.common import (EMA, apply_gradients, atomic_save, resume, run_main, save_checkpoint, set_lr,
                                 start_run)
from kinema.train.decoded_loss import DecodedLoss
from kinema.vae.model import VAEConfig, VideoVAE

log = logging.getLogger(__name__)

DIT_PRESETS = {
    "shapes": DiTConfig(in_channels=16, out_channels=16, dim=192, num_heads=3, num_layers=6, ffn_dim=768,
                        text_dim=384, freq_dim=256),
    "tiny": DiTConfig(in_channels=4, out_channels=4, dim=24, num_heads=2, num_layers=2, ffn_dim=48,
                      text_dim=384, freq_dim=32),
    "wan2.1-1.3b": DiTConfig(),
    "wan2.1-14b": DiTConfig(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824),
}
T_BINS = (0.25, 0.5, 0.75, 1.0)


def with_attention(cfg: DiTConfig, mode: str, temporal_conv: bool = False) -> DiTConfig:
    """`cfg` in another attention mode at (about) the same parameter count: the factorised mode pays for its
    temporal attention (q, k, v, o and their norms; the conv's kernel 3 + bias) with a narrower FFN."""
    if mode != "factorised":
        return replace(cfg, attention=mode)
    d = cfg.dim
    extra = 4 * (d * d + d) + 2 * d + (4 * d if temporal_conv else 0)
    ffn = cfg.ffn_dim - round(extra / (2 * d + 1))
    if ffn < d:
        raise ValueError(f"FFN {cfg.ffn_dim} is too narrow to pay for a temporal attention of dim {d}")
    return replace(cfg, attention=mode, temporal_conv=temporal_conv, ffn_dim=ffn)


def load_vae_checkpoint(path: str | Path) -> VideoVAE:
    """The frozen VAE from a `kinema train-vae` checkpoint, or from a kinema model folder (its vae.safetensors)."""
    path = Path(path)
    if path.is_dir():
        from kinema.pipelines.loading import load_pipeline

        return load_pipeline(path).vae.requires_grad_(False)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    vae = VideoVAE(VAEConfig.from_dict(ck["config"]))
    vae.load_state_dict(ck.get("ema", ck["model"]))
    return vae.eval().requires_grad_(False)


def random_bounce_clip(rng: np.random.Generator, frames: int, height: int, width: int, colours=None):
    """A training clip whose motion is `bounce` (the one motion that goes on forever: long-video training)."""
    scene = replace(random_training_scene(rng, colours), motion="bounce")
    return render_clip(scene, rng, frames, height, width, caption=random_caption(scene, rng))


def add_long_windows(pool: dict, long_pool: dict) -> dict:
    """The pool plus every window of its clip length from the long pool's clips; `starts` (N,) says where each
    sample begins in its clip (a window that starts inside a clip continues a video: it trains with a clean prefix)."""
    n, k = pool["latents"].shape[2], long_pool["latents"].shape[2] - pool["latents"].shape[2] + 1
    windows = long_pool["latents"].unfold(2, n, 1)                                   # (N, C, K, H, W, n)
    windows = rearrange(windows, "b c k h w n -> (b k) c n h w")
    ids = long_pool["caption_ids"].repeat_interleave(k) + len(pool["text"])
    starts = torch.arange(k).repeat(len(long_pool["latents"]))
    return {**pool, "latents": torch.cat([pool["latents"], windows]),
            "caption_ids": torch.cat([pool["caption_ids"], ids]),
            "text": torch.cat([pool["text"], long_pool["text"]]),
            "captions": pool["captions"] + long_pool["captions"],
            "starts": torch.cat([torch.zeros(len(pool["latents"]), dtype=torch.long), starts])}


@torch.no_grad()
def build_pool(vae: VideoVAE, text: TextEncoder, n: int, seed: int, frames: int, size: int, batch: int = 64,
               colours: tuple[str, ...] | None = None, clip_fn=random_training_clip):
    """Render n training clips (`clip_fn`, of `colours`, default the vocabulary), encode them; returns raw latent
    means (N, C, T', H', W'), caption ids, captions."""
    rng = np.random.default_rng(seed)
    latents, captions = [], []
    for start in range(0, n, batch):
        clips = [clip_fn(rng, frames, size, size, colours) for _ in range(min(batch, n - start))]
        video = torch.from_numpy(np.stack([c.frames for c in clips])).float().div(127.5).sub(1)
        mean, _ = vae.encode_moments(video.permute(0, 4, 1, 2, 3), chunked=False)
        latents.append(mean)
        captions += [c.caption for c in clips]
        log.info("pool: %d / %d clips encoded", start + len(clips), n)
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    emb = torch.cat([text(unique[i:i + 256]) for i in range(0, len(unique), 256)])
    return {"latents": torch.cat(latents), "caption_ids": torch.tensor([index[c] for c in captions]),
            "text": emb.half(), "captions": unique, "empty": text([""])[0].half()}


def latent_stats(latents: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4))
    return tuple(mean.tolist()), tuple(std.tolist())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kinema train", description=__doc__.split("\n")[0])
    p.add_argument("--vae", help="VAE checkpoint from `kinema train-vae`, or a model folder (required unless "
                                 "--cache, whose model it defaults to)")
    p.add_argument("--init", help="start the DiT from this model folder's dit.safetensors (e.g. kinema/models/shapes)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--preset", default="shapes", choices=sorted(DIT_PRESETS))
    p.add_argument("--attention", choices=["full", "factorised", "causal"],
                   help="self-attention mode (default: the preset's; factorised keeps the parameter count)")
    p.add_argument("--temporal-conv", action="store_true", help="factorised: add the depthwise temporal conv")
    p.add_argument("--patch-size", type=patch_size,
                   help="the DiT's (t, h, w) patch, e.g. 1,1,1 (default: the preset's); with --init of a coarser "
                        "patch, the patch embedding and head are derived from it (kinema/train/repatch.py)")
    p.add_argument("--layers", type=int,
                   help="DiT blocks (default: the preset's); with --init of fewer blocks, the new ones start as "
                        "copies that add nothing (kinema/train/deepen.py)")
    p.add_argument("--window", type=int, default=0,
                   help="latent frames per training sample, cropped at random from the pool's longer clips (0: all)")
    p.add_argument("--long-pool", type=int, default=0,
                   help="bounce clips of 2 x --frames - 1 frames, all their windows of --frames added to the pool "
                        "(long-video training for causal streaming)")
    p.add_argument("--prefix-frac", type=float, default=0.0,
                   help="fraction of samples holding a clean prefix of latent frames (causal streaming); windows "
                        "that do not start at frame 0 always hold one")
    p.add_argument("--prefix-next", action="store_true",
                   help="on samples holding a clean prefix, score only the first frame after it: the condition a "
                        "causal model streams in (clean past, one noisy latent frame)")
    p.add_argument("--given-noise", type=float, default=0.0, metavar="T",
                   help="on half the samples with given latent frames, noise them to a time drawn in [0, T] (their "
                        "tokens get it): a streamed model then takes its past noised (--context-noise) and does "
                        "not copy its errors (0: given frames always clean)")
    p.add_argument("--pool", type=int, default=16000, help="training clips in the latent pool")
    p.add_argument("--shapes-colours", type=lambda s: tuple(c for c in s.split(",") if c),
                   help="colours of the pool's clips, comma-separated (default: the vocabulary; extra: pink)")
    p.add_argument("--keep-latent-stats", action="store_true",
                   help="normalise the pool with the VAE's own latent statistics instead of measuring them on it "
                        "(fine-tuning a trained model on a small pool)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--text-dropout", type=float, default=0.1, help="fraction of captions replaced by ''")
    p.add_argument("--t-shift", type=float, default=2.0, help="timestep shift of the training t draw")
    p.add_argument("--t-range", type=time_range, default=(0.0, 1.0),
                   help="LO,HI: train on times in this range only (the draw scaled into it), e.g. 0,0.5 for the "
                        "low-noise expert of a two-expert model (Wan 2.2 A14B's split)")
    p.add_argument("--sample-shift", type=float, default=None,
                   help="timestep shift the model samples with, written to its defaults (default: --t-shift)")
    p.add_argument("--cond-frac", type=float, default=0.35,
                   help="fraction of samples conditioned on given latent frames (image-to-video, keyframes)")
    p.add_argument("--pixel-loss", type=float, default=0.0,
                   help="weight of a pixel loss on the predicted clean latents, through the frozen VAE decoder, at "
                        "low noise (kinema/train/decoded_loss.py; 0: off)")
    p.add_argument("--pixel-t-max", type=float, default=0.5, help="--pixel-loss: only samples with t below this")
    p.add_argument("--pixel-samples", type=int, default=8, help="--pixel-loss: at most this many samples per step")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    sources.add_args(p)
    parallel.add_args(p)
    run_log.add_args(p)
    return p.parse_args(argv)


def _prepare(args, out: Path):
    """Frozen VAE (with latent statistics), the cached pool (normalised latents), and the text config."""
    text_cfg = TextEncoderConfig()
    vae = load_vae_checkpoint(args.vae)
    pool = _cached_pool(out / "pool.pt", lambda: build_pool(vae, TextEncoder(text_cfg), args.pool, args.seed + 1,
                                                           args.frames, args.size, colours=args.shapes_colours))
    if args.keep_latent_stats:
        mean, std = vae.config.latents_mean, vae.config.latents_std
    else:
        mean, std = latent_stats(pool["latents"])
    cfg = VAEConfig.from_dict({**vae.config.to_dict(), "latents_mean": mean, "latents_std": std})
    vae_n = VideoVAE(cfg)
    vae_n.load_state_dict(vae.state_dict())
    pool["latents"] = vae_n.normalise(pool["latents"])
    if args.long_pool:
        long_pool = _cached_pool(out / "long_pool.pt", lambda: build_pool(
            vae, TextEncoder(text_cfg), args.long_pool, args.seed + 2, 2 * args.frames - 1, args.size,
            colours=args.shapes_colours, clip_fn=random_bounce_clip))
        pool = add_long_windows(pool, {**long_pool, "latents": vae_n.normalise(long_pool["latents"])})
    return vae_n.eval(), pool, text_cfg


def _cached_pool(path: Path, build) -> dict:
    if path.exists():
        return torch.load(path, weights_only=False)
    pool = build()
    atomic_save(pool, path)
    return pool


def sample_batch(pool: dict, batch: int, dropout: float, g: torch.Generator):
    idx = torch.randint(len(pool["latents"]), (batch,), generator=g)
    x0 = pool["latents"][idx]
    text = pool["text"][pool["caption_ids"][idx]].float()
    drop = torch.rand(batch, generator=g) < dropout
    text[drop] = pool["empty"].float()
    return x0, text


def given_frames(batch: int, frames: int, frac: float, g: torch.Generator) -> torch.Tensor:
    """(B, T') bool: latent frames held fixed. Of the conditioned samples: 60 % the first frame, 20 % the first
    and last, 20 % the first 1..T'-1 frames (continuing a video)."""
    given = torch.zeros(batch, frames, dtype=torch.bool)
    for i in torch.nonzero(torch.rand(batch, generator=g) < frac).flatten().tolist():
        kind = torch.rand(1, generator=g).item()
        if kind < 0.6 or frames < 2:
            given[i, 0] = True
        elif kind < 0.8:
            given[i, [0, -1]] = True
        else:
            given[i, : int(torch.randint(1, frames, (1,), generator=g))] = True
    return given


def crop_windows(x0: torch.Tensor, window: int, g: torch.Generator,
                 starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `window` latent frames (B, C, window, H, W) and their start frames (B,) (drawn from g
    unless given)."""
    if starts is None:
        starts = torch.randint(0, x0.shape[2] - window + 1, (x0.shape[0],), generator=g)
    index = starts[:, None] + torch.arange(window)                                    # (B, window)
    return torch.stack([x[:, i] for x, i in zip(x0, index)]), starts


def clean_prefix(given: torch.Tensor, starts: torch.Tensor | None, frac: float, g: torch.Generator,
                 next_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold the first 1..T'-1 latent frames clean on a fraction of samples, and on every window that starts inside
    a clip (its first frame is a continuation, never an image latent), as a streamed causal model sees its past.
    Returns (given, scored): the frames the loss scores are the noisy ones, or with `next_only` on those samples
    only the first frame after the prefix (a streamed chunk of one latent frame: clean past, one noisy frame)."""
    b, frames = given.shape
    pick = torch.rand(b, generator=g) < frac
    if starts is not None:
        pick |= starts > 0
    lengths = torch.randint(1, max(frames, 2), (b,), generator=g)
    index = torch.arange(frames)[None, :]                                             # (1, T')
    prefix = index < lengths[:, None]                                                 # (B, T')
    given = torch.where(pick[:, None], prefix, given)
    scored = ~given
    if next_only:
        scored = torch.where(pick[:, None], index == lengths[:, None], scored)
    return given, scored


def given_times(batch: int, most: float, g: torch.Generator) -> torch.Tensor:
    """(B,) time the given frames are noised to: 0 on half the samples, uniform in [0, most] on the others. Noise
    augmentation of the condition, as GameNGen trains its context frames: a model that continues its own past
    (streaming) is then given that past slightly noised, and does not copy the small errors it holds."""
    noised = torch.rand(batch, generator=g) < 0.5
    return torch.where(noised, most * torch.rand(batch, generator=g), 0.0)


def flow_loss(dit: DiT, x0, text, t, noise, given: torch.Tensor | None = None,
              decoded: DecodedLoss | None = None, scored: torch.Tensor | None = None,
              given_t: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample flow-matching MSE (B,) over the frames that are not given, or those `scored` (B, T') marks (plus,
    with `decoded`, the pixel loss of the predicted clean latents through the VAE decoder).

    t (B,) is the time of the generated frames; given (B, T') marks the frames held as condition, clean (time 0)
    or, with given_t (B,), noised to that time (their tokens get it as their timestep).
    """
    b, _, frames, h, w = x0.shape
    if given is None:
        given = torch.zeros(b, frames, dtype=torch.bool)
    held = torch.zeros_like(t) if given_t is None else given_t
    t_frame = torch.where(given, held[:, None], t[:, None])                          # (B, T')
    x_t = add_noise(x0, noise, t_frame[:, None, :, None, None])
    _, ph, pw = getattr(dit, "module", dit).config.patch_size  # DDP wraps the DiT in .module
    t_tokens = t_frame.repeat_interleave((h // ph) * (w // pw), dim=1)               # (B, L), frame-major
    v = dit(x_t, t_tokens * TIMESTEP_SCALE, text)
    err = (v - velocity_target(x0, noise)).square().mean(dim=(1, 3, 4))              # (B, T')
    keep = (~given if scored is None else scored & ~given).float()
    loss = (err * keep).sum(1) / keep.sum(1).clamp(min=1)
    if decoded is not None:
        loss = loss + decoded.weight * decoded(x0, x_t, v, t_frame, t)
    return loss


def per_bin(t: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    out, lo = {}, 0.0
    for hi in T_BINS:
        sel = (t >= lo) & (t < hi if hi < 1 else t <= hi)
        if sel.any():
            out[f"loss_t{lo:.2f}-{hi:.2f}"] = float(losses[sel].mean())
        lo = hi
    return out


@dataclass(frozen=True)
class TrainHooks:
    """Ways to reuse this loop (e.g. LoRA fine-tuning) without a second one."""

    prepare: Callable[[DiT], None] | None = None   # change the DiT before training (add adapters, freeze weights);
                                                   # only parameters left with requires_grad are trained
    on_checkpoint: Callable[[Path, int, DiT, EMA], None] | None = None  # write extra files (run folder, step,
                                                                        # DiT, EMA) at each checkpoint, on rank 0


def trainable_parameters(dit: DiT) -> list[torch.nn.Parameter]:
    return [p for p in dit.parameters() if p.requires_grad]


def build_source(args, out: Path, d: parallel.Dist):
    """(source of batches, frozen VAE whose statistics normalise the latents, text encoder config)."""
    patch = dit_config(args).patch_size[1]
    if args.cache:
        cache = sources.LatentCache(args.cache)
        vae, text_cfg = sources.load_vae_and_text(args.vae or cache.manifest["settings"]["model"])
        if json.loads(json.dumps(vae.config.to_dict())) != cache.manifest["vae"]:
            raise ValueError(f"cache {args.cache} was encoded with another VAE than {args.vae}")
        return sources.CacheSource(cache, args.batch, args.seed), vae, text_cfg
    if args.vae is None:
        raise ValueError("--vae is required (a model folder or a train-vae checkpoint) unless --cache is given")
    if args.data:
        vae, text_cfg = sources.load_vae_and_text(args.vae)
        folder = sources.VideoFolder(args.data, sources.video_config(args, vae, patch))
        text = TextEncoder(text_cfg, d.device)
        return sources.FolderSource(folder, vae.to(d.device), text, args.batch, args.seed), vae, text_cfg
    with parallel.main_first(d):  # rank 0 renders and encodes the pool; the others then read it
        vae, pool, text_cfg = _prepare(args, out)
    return sources.PoolSource(pool), vae, text_cfg


def patch_size(text: str) -> tuple[int, int, int]:
    try:
        patch = tuple(int(v) for v in text.split(","))
    except ValueError:
        patch = ()
    if len(patch) != 3 or min(patch) < 1:
        raise argparse.ArgumentTypeError(f"a patch is three positive integers t,h,w, got {text!r}")
    return patch


def time_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi) with 0 <= lo < hi <= 1."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0,0.5), got {text!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise argparse.ArgumentTypeError(f"need 0 <= LO < HI <= 1, got {text!r}")
    return lo, hi


def dit_config(args) -> DiTConfig:
    """The preset, in the asked attention mode and patch size."""
    cfg = DIT_PRESETS[args.preset]
    cfg = with_attention(cfg, args.attention, args.temporal_conv) if args.attention else cfg
    cfg = replace(cfg, patch_size=args.patch_size) if args.patch_size else cfg
    return replace(cfg, num_layers=args.layers) if args.layers else cfg


def build_dit(args, vae: VideoVAE, text_cfg: TextEncoderConfig) -> DiT:
    cfg = dit_config(args)
    dit = DiT(cfg)
    if cfg.in_channels != vae.config.z_dim or cfg.text_dim != text_cfg.dim:
        raise ValueError(f"preset {args.preset} takes {cfg.in_channels} latent channels and {cfg.text_dim}-d text, "
                         f"the VAE/text encoder give {vae.config.z_dim} and {text_cfg.dim}")
    if args.init:
        init_weights(dit, Path(args.init))
    return dit


def init_weights(dit: DiT, folder: Path) -> None:
    """The weights of the model folder's DiT; from a coarser patch, its embedding and head are repatched."""
    from kinema.pipelines.loading import load_weights

    spec = folder / "model.json"
    old = DiTConfig.from_dict(json.loads(spec.read_text())["dit"]) if spec.exists() else None
    if old is None or (old.patch_size, old.num_layers) == (dit.config.patch_size, dit.config.num_layers):
        load_weights(dit, folder / "dit.safetensors")
        return
    from safetensors.torch import load_file

    from kinema.train.deepen import deepen_state
    from kinema.train.repatch import repatch_state

    state = load_file(str(folder / "dit.safetensors"))
    if old.patch_size != dit.config.patch_size:
        log.info("repatching %s from patch %s to %s", folder, old.patch_size, dit.config.patch_size)
        state = repatch_state(state, old.patch_size, dit.config.patch_size, dit.config.out_channels)
    if old.num_layers != dit.config.num_layers:
        log.info("deepening %s from %d to %d blocks", folder, old.num_layers, dit.config.num_layers)
        state = deepen_state(state, old.num_layers, dit.config.num_layers)
    dit.load_state_dict(state)


def draw_batch(source, g: torch.Generator, args, d: parallel.Dist):
    """This rank's share of the step's global batch: (x0, text, t, noise, given, scored, given_t), on the training
    device.

    Every random draw is made for the whole global batch, in the same order on every rank, and sliced, so the
    step's data and noise do not depend on the number of processes."""
    idx, part = source.draw(g, args.batch), rank_slice(args.batch, d.rank, d.world)
    drop = torch.rand(args.batch, generator=g) < args.text_dropout
    x0, text = source.fetch(idx[part], idx)                                          # (b, C, T', H, W), (b, L, D)
    text[drop[part]] = source.empty.to(text.dtype)
    lo, hi = args.t_range
    t = lo + (hi - lo) * logit_normal_times(args.batch, shift=args.t_shift, generator=g)
    starts = source.starts(idx) if isinstance(source, sources.PoolSource) else None  # long clips' windows
    if args.window:
        crop = torch.randint(0, x0.shape[2] - args.window + 1, (args.batch,), generator=g)
        x0, _ = crop_windows(x0, args.window, g, crop[part])
        starts = crop if starts is None else starts + crop
    given = given_frames(args.batch, x0.shape[2], args.cond_frac, g)
    scored = ~given
    if args.prefix_frac or starts is not None:
        given, scored = clean_prefix(given, starts, args.prefix_frac, g, args.prefix_next)
    noise = torch.randn((args.batch, *x0.shape[1:]), generator=g)
    given_t = given_times(args.batch, args.given_noise, g) if args.given_noise else torch.zeros(args.batch)
    return [v.to(d.device) for v in (x0, text, t[part], noise[part], given[part], scored[part], given_t[part])]


def train_step(model, dit: DiT, opt, ema: EMA, batch, args, d: parallel.Dist, step: int,
               decoded: DecodedLoss | None = None):
    """One optimizer step over `--grad-accum` micro-batches; returns the global batch's per-sample losses and
    times (gathered from every rank) and the gradient norm."""
    x0, text, t, noise, given, scored, given_t = batch
    n, micro = x0.shape[0], x0.shape[0] // args.grad_accum
    losses = []
    for k in range(args.grad_accum):
        part = slice(k * micro, (k + 1) * micro)
        with parallel.no_sync(model, last=k == args.grad_accum - 1):
            with parallel.autocast(d):
                loss = flow_loss(model, x0[part], text[part], t[part], noise[part], given[part], decoded, scored[part],
                                 given_t[part])
            (loss.float().sum() / n).backward()
        losses.append(loss.detach().float())
    gnorm = apply_gradients(dit, opt, ema, step)
    return parallel.gather(torch.cat(losses), d).cpu(), parallel.gather(t, d).cpu(), gnorm


def check_args(args, d: parallel.Dist) -> None:
    if args.grad_accum < 1 or args.batch % (d.world * args.grad_accum):
        raise ValueError(f"--batch {args.batch} must be divisible by processes x --grad-accum "
                         f"({d.world} x {args.grad_accum})")
    if args.steps < 1 or args.ckpt_every < 1:
        raise ValueError("--steps and --ckpt-every must be positive")
    if not 0 <= args.given_noise <= 1:
        raise ValueError(f"--given-noise must be a time in [0, 1], got {args.given_noise}")


def _restore(source, d: parallel.Dist):
    def on_load(ck: dict) -> None:
        source.load_state_dict(ck.get("data", {}))
        if ck.get("world") == d.world and ck.get("rank_rng"):
            torch.set_rng_state(ck["rank_rng"][d.rank])
    return on_load


def sample_shift(args) -> float:
    return args.t_shift if args.sample_shift is None else args.sample_shift


def save_run(out: Path, step: int, state: dict, args, d: parallel.Dist, hooks: TrainHooks) -> None:
    """Checkpoint (rank 0 writes; every rank takes part in the gathers) and the loadable EMA model folder."""
    dit, ema, opt, vae, text_cfg = (state[k] for k in ("dit", "ema", "opt", "vae", "text_cfg"))
    extra = {"data": state["source"].state_dict(), "world": d.world,
             "rank_rng": parallel.gather_objects(torch.get_rng_state(), d), **parallel.full_states(dit, ema, opt, d)}
    if not d.main:
        return
    save_checkpoint(out / "checkpoint.pt", dit, ema, opt, step, state["np_rng"], args, state["g"], extra)
    frames = 1 + 4 * (args.window - 1) if args.window else args.frames
    defaults = GenerationSettings(frames=frames, height=args.size, width=args.size, shift=sample_shift(args))
    ema_model = parallel.full_model(ema.model, extra.get("ema"))
    save_model(out / "model", text_cfg, vae, ema_model, defaults, name="shapes" if state["pool"] else out.name,
               extra={"trained_steps": step})
    if hooks.on_checkpoint is not None:
        hooks.on_checkpoint(out, step, dit, ema)


def train(args: argparse.Namespace, hooks: TrainHooks | None = None) -> Path:
    d = parallel.init(args.device, args.precision, args.fsdp)
    ckpt_path = _train(args, hooks or TrainHooks(), d)
    parallel.finish(d)  # only once the run's (sharded) model is gone: see `finish`
    return ckpt_path


def _train(args: argparse.Namespace, hooks: TrainHooks, d: parallel.Dist) -> Path:
    check_args(args, d)
    out, np_rng = Path(args.out), start_run(args)
    source, vae, text_cfg = build_source(args, out, d)
    dit = build_dit(args, vae, text_cfg)
    if hooks.prepare is not None:
        hooks.prepare(dit)
    ema = EMA(dit.to(d.device), args.ema)
    model = parallel.wrap(dit, d, args.grad_checkpoint, ema.model)
    opt = torch.optim.AdamW(trainable_parameters(dit), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    g, ckpt_path = torch.Generator().manual_seed(args.seed), out / "checkpoint.pt"
    parallel.seed_rank(args.seed, d)
    if args.resume:
        load = (lambda ck: parallel.load_full_states(dit, ema, opt, ck)) if d.fsdp else None
        step = resume(ckpt_path, dit, ema, opt, np_rng, g, _restore(source, d), load)
    else:
        step = 0
    state = {"dit": dit, "ema": ema, "opt": opt, "vae": vae, "text_cfg": text_cfg, "source": source, "g": g,
             "np_rng": np_rng, "pool": isinstance(source, sources.PoolSource)}
    run = run_log.RunLog(out, args, step, d.main)
    decoded = DecodedLoss(vae.to(d.device).requires_grad_(False), args.pixel_loss, args.pixel_t_max,
                          args.pixel_samples) if args.pixel_loss else None
    while step < args.steps:
        t0, lr = time.time(), set_lr(opt, step, args)
        losses, t, gnorm = train_step(model, dit, opt, ema, draw_batch(source, g, args, d), args, d, step, decoded)
        step += 1
        run.step(step, loss=float(losses.mean()), gnorm=gnorm, lr=lr, sec=round(time.time() - t0, 3),
                 **per_bin(t, losses))
        if step % args.ckpt_every == 0 or step == args.steps:
            save_run(out, step, state, args, d, hooks)
            run.summary(step, "running", **run_info(args, d, dit, source))
        if args.sample_every and step % args.sample_every == 0 and d.main:
            _sample(out, step, state, args, d, source)
    run.summary(step, "finished", **run_info(args, d, dit, source))
    run.close()
    return ckpt_path


def run_info(args, d: parallel.Dist, dit: DiT, source) -> dict:
    """The resolved configuration of a run, for summary.json."""
    return {"args": vars(args), "dit": dit.config.to_dict(), "processes": d.world, "device": str(d.device),
            "precision": "bf16" if d.autocast is not None else "fp32", "fsdp": d.fsdp, "data": source.summary()}


def _sample(out: Path, step: int, state: dict, args, d: parallel.Dist, source) -> None:
    if d.fsdp:
        log.info("samples are not written under --fsdp (the EMA weights are sharded)")
        return
    frames = 1 + 4 * (args.window - 1) if args.window else args.frames
    settings = GenerationSettings(frames=frames, height=args.size, width=args.size, shift=sample_shift(args),
                                  steps=args.sample_steps)
    path = run_log.write_sample(out / "samples" / f"step{step:07d}.mp4", state["text_cfg"], state["vae"],
                                state["ema"].model, settings, args.sample_prompt or source.first_caption(), d.device)
    log.info("sample: %s", path)


def main(argv=None) -> int:
    import os
    import sys

    args = parse_args(argv)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:  # relaunch this command under torchrun
        import subprocess

        return subprocess.call(parallel.torchrun_command(list(sys.argv[1:] if argv is None else argv), args.nproc))
    return run_main(lambda _: args, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
