"""Where the DiT trainer's clips come from: the synthetic shapes pool, a video folder, or a latent cache.

Each source hands out *global* batches (the same on every rank, drawn from the shared generator or from a
deterministic `BatchStream`) and loads only this rank's slice, so a run's data does not depend on how many
processes share it. Latents come out normalised with the VAE's statistics; text as (b, L, D) float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from kinema.data.buckets import BatchStream, DataPosition
from kinema.data.latent_cache import LatentCache
from kinema.data.video_folder import VideoDataConfig, VideoFolder, parse_ratio
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.vae.model import VAEConfig, VideoVAE

log = logging.getLogger(__name__)


def add_args(p) -> None:
    g = p.add_argument_group("training data (default: the synthetic shapes pool)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data", help="folder of captioned videos/images, encoded on the fly (needs --vae)")
    src.add_argument("--cache", help="latent cache folder written by `kinema cache`")
    g.add_argument("--aspect-ratios", default="1", help="bucket aspect ratios W:H, comma-separated (e.g. 1,16:9,9:16)")
    g.add_argument("--frame-buckets", help="allowed clip lengths, comma-separated 1 + 4k (default: all <= --frames)")
    g.add_argument("--fps", type=float, help="resample clips to this frame rate (default: each file's own)")


def load_vae_and_text(path: str | Path) -> tuple[VideoVAE, TextEncoderConfig]:
    """The frozen VAE and the text encoder config of a model folder / built-in name, or of a train-vae checkpoint
    (which has no text encoder: the default one)."""
    from kinema.pipelines.loading import BUILTIN_DIR, load_pipeline
    from kinema.train.dit import load_vae_checkpoint

    if Path(path).is_dir() or (BUILTIN_DIR / str(path) / "model.json").exists():
        pipe = load_pipeline(path)
        return pipe.vae.eval().requires_grad_(False), pipe.text_encoder.config
    if not Path(path).exists():
        raise FileNotFoundError(f"VAE {path} is neither a model folder nor a checkpoint file")
    return load_vae_checkpoint(path), TextEncoderConfig()


class PoolSource:
    """The cached shapes pool of `kinema train` (normalised latents in memory), sampled with replacement."""

    def __init__(self, pool: dict):
        self.pool = pool
        self.empty = pool["empty"].float()

    def draw(self, g: torch.Generator, batch: int) -> list[int]:
        return torch.randint(len(self.pool["latents"]), (batch,), generator=g).tolist()

    def fetch(self, indices: list[int], spare: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(indices, dtype=torch.long)
        return self.pool["latents"][idx], self.pool["text"][self.pool["caption_ids"][idx]].float()

    def starts(self, indices: list[int]) -> torch.Tensor | None:
        """(B,) where each sample starts in its clip (windows of long clips), or None when all start at 0."""
        starts = self.pool.get("starts")
        return None if starts is None else starts[torch.tensor(indices, dtype=torch.long)]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def summary(self) -> dict:
        return {"pool": len(self.pool["latents"])}

    def first_caption(self) -> str:
        return "a red circle moving right on a black background"


class _StreamSource:
    """Shared by the folder and cache sources: a resumable stream of global bucket batches."""

    def __init__(self, keys: list, batch: int, seed: int):
        self.stream, self.seed = BatchStream(keys, batch, seed), seed
        self._epoch = 0

    def draw(self, g: torch.Generator, batch: int) -> list[int]:
        out = self.stream.next()
        self._epoch = self.stream.position.epoch
        return out

    def state_dict(self) -> dict:
        return {"position": self.stream.position.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "position" in state:
            self.stream.position = DataPosition(**state["position"])


class FolderSource(_StreamSource):
    """A video folder encoded on the fly by the frozen VAE (posterior mean) and the text encoder."""

    def __init__(self, folder: VideoFolder, vae: VideoVAE, text: TextEncoder, batch: int, seed: int):
        super().__init__(folder.buckets, batch, seed)
        self.folder, self.vae, self.text = folder, vae, text
        self.empty = text([""])[0].float().cpu()

    def _position(self, i: int) -> float:
        """Where item i's clip starts this epoch: a pure function of (seed, epoch, item)."""
        return float(np.random.default_rng([self.seed, self._epoch, i]).random())

    def _load(self, indices: list[int], spare: list[int]) -> list[int]:
        """indices, each failing file replaced by the next readable one of `spare` (the global batch)."""
        ok = [i for i in dict.fromkeys(spare) if self.folder.try_load(i, self._position(i)) is not None]
        if not ok:
            raise ValueError("no file of a whole batch could be decoded")
        return [i if i in ok else ok[n % len(ok)] for n, i in enumerate(indices)]

    @torch.no_grad()
    def fetch(self, indices: list[int], spare: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        clips = [self.folder.try_load(i, self._position(i)) for i in indices]
        if any(c is None for c in clips):
            indices = self._load(indices, spare or indices)
            clips = [self.folder.try_load(i, self._position(i)) for i in indices]
        param = next(self.vae.parameters())
        video = torch.stack(clips).to(param.device, param.dtype)                   # (b, 3, T, H, W)
        x0 = self.vae.normalise(self.vae.encode_moments(video)[0]).float().cpu()   # (b, C, T', H', W')
        text = self.text([self.folder.items[i].caption for i in indices]).float().cpu()
        return x0, text

    def summary(self) -> dict:
        return {"data": str(self.folder.root), **self.folder.summary()}

    def first_caption(self) -> str:
        return self.folder.items[0].caption


class CacheSource(_StreamSource):
    """Latents and text embeddings read from a `kinema cache` folder."""

    def __init__(self, cache: LatentCache, batch: int, seed: int):
        super().__init__(cache.keys, batch, seed)
        self.cache, self.empty = cache, cache.empty
        vae = VAEConfig.from_dict(cache.manifest["vae"])
        self.mean = torch.tensor(vae.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae.latents_std).view(1, -1, 1, 1, 1)

    def fetch(self, indices: list[int], spare: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z, text = self.cache.fetch(indices)
        return (z - self.mean) / self.std, text

    def summary(self) -> dict:
        return self.cache.summary()

    def first_caption(self) -> str:
        return self.cache.captions[0]


def video_config(args, vae: VideoVAE, patch: int) -> VideoDataConfig:
    """The video-folder settings of a training run (or a `kinema cache` run) from its flags."""
    buckets = tuple(int(x) for x in args.frame_buckets.split(",")) if args.frame_buckets else None
    return VideoDataConfig(frames=args.frames, size=args.size,
                           aspect_ratios=tuple(parse_ratio(r) for r in args.aspect_ratios.split(",")),
                           frame_buckets=buckets, fps=args.fps, multiple=vae.config.spatial_compression * patch,
                           temporal_compression=vae.config.temporal_compression)
