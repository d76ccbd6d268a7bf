"""Latents and text embeddings of a video folder, encoded once into safetensors shards.

    kinema cache data/ --model shapes --out cache/        then: kinema train --cache cache/ --out runs/x

    cache/manifest.json                  settings, model, VAE config, shard list, counts, skipped files
    cache/empty.safetensors              the empty prompt's embedding (text dropout for classifier-free guidance)
    cache/17x64x64-00000.safetensors     one bucket's clips: latents (N, C, T', H', W') float32, the shard's unique
                                         captions' embeddings text (U, L, D) float16, caption_ids (N,) int64

Latents are the VAE posterior mean, *raw* (not normalised): training normalises them with the VAE statistics
recorded in the manifest, so a cache stays valid when only the statistics change. Every file is written atomically
(temp file, then rename), so a shard that exists is complete: an interrupted `kinema cache` run, started again with
the same arguments, skips the shards it has and encodes the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kinema.atomic import atomic_path
from kinema.data.video_folder import VideoDataConfig, VideoFolder

log = logging.getLogger(__name__)

FORMAT = "kinema-latent-cache"
VERSION = 1


def save_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """safetensors file written atomically; metadata values are JSON-encoded."""
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, meta)


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


def shard_metadata(path: Path) -> dict | None:
    """The metadata of a complete shard, or None when the file is missing or unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (OSError, ValueError, SafetensorError):  # JSONDecodeError is a ValueError
        return None


def plan_shards(folder: VideoFolder, clips_per_video: int, shard_size: int) -> dict[str, list[tuple[int, float]]]:
    """Shard name -> [(item, clip position in [0, 1])]: each bucket's clips in file order, cut into shards."""
    by_bucket: dict[tuple, list[tuple[int, float]]] = {}
    for i, bucket in enumerate(folder.buckets):
        n = 1 if bucket[0] == folder.items[i].num_frames or folder.items[i].fps == 0 else clips_per_video
        for j in range(n):
            by_bucket.setdefault(bucket, []).append((i, j / (n - 1) if n > 1 else 0.0))
    plan = {}
    for (f, h, w), clips in sorted(by_bucket.items()):
        for k in range(0, len(clips), shard_size):
            plan[f"{f}x{h}x{w}-{k // shard_size:05d}.safetensors"] = clips[k:k + shard_size]
    return plan


@torch.no_grad()
def encode_shard(folder: VideoFolder, clips: list[tuple[int, float]], vae, text_encoder, batch: int):
    """(tensors, metadata) of one shard; clips that fail to decode are left out and listed in the metadata."""
    device = next(vae.parameters()).device
    latents, captions, files = [], [], []
    for k in range(0, len(clips), batch):
        loaded = [(i, folder.try_load(i, pos)) for i, pos in clips[k:k + batch]]
        loaded = [(i, x) for i, x in loaded if x is not None]
        if not loaded:
            continue
        video = torch.stack([x for _, x in loaded]).to(device)                    # (b, 3, T, H, W)
        mean, _ = vae.encode_moments(video.to(next(vae.parameters()).dtype))       # (b, C, T', H', W') raw
        latents.append(mean.float().cpu())
        captions += [folder.items[i].caption for i, _ in loaded]
        files += [folder.items[i].path for i, _ in loaded]
    unique = sorted(set(captions))
    skipped = sorted({folder.items[i].path for i, _ in clips} - set(files))
    meta = {"captions": captions, "files": files, "skipped": skipped, "count": len(files)}
    if not files:
        return {}, meta
    text = text_encoder(unique).to(torch.float16).cpu()                           # (U, L, D)
    ids = torch.tensor([unique.index(c) for c in captions], dtype=torch.int64)
    return {"latents": torch.cat(latents), "text": text, "caption_ids": ids}, meta


def cache_settings(data: Path, model: str, cfg: VideoDataConfig, clips_per_video: int, shard_size: int) -> dict:
    return {"data": str(data.resolve()), "model": model, "video": asdict(cfg), "clips_per_video": clips_per_video,
            "shard_size": shard_size}


def _check_existing(out: Path, settings: dict) -> None:
    path = out / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") != json.loads(json.dumps(settings)):
            raise ValueError(f"{out} holds a cache made with other settings; use another --out or delete it")


def build_cache(data: str | Path, pipe, out: str | Path, cfg: VideoDataConfig, clips_per_video: int = 1,
                shard_size: int = 64, batch: int = 8, progress=None) -> dict:
    """Encode a video folder with a pipeline's VAE and text encoder into `out` (resumable); returns the manifest.
    `progress(done, total)` is called after each shard."""
    data, out = Path(data), Path(out)
    settings = cache_settings(data, pipe.source, cfg, clips_per_video, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    _check_existing(out, settings)
    folder = VideoFolder(data, cfg)
    plan = plan_shards(folder, clips_per_video, shard_size)
    manifest = {"format": FORMAT, "version": VERSION, "settings": settings, "latents": "raw VAE posterior mean",
                "vae": pipe.vae.config.to_dict(), "text_encoder": pipe.text_encoder.config.to_dict(),
                "shards": sorted(plan), "complete": False}
    write_json(out / "manifest.json", manifest)
    if not (out / "empty.safetensors").exists():
        save_shard(out / "empty.safetensors", {"text": pipe.text_encoder([""]).to(torch.float16).cpu()}, {})
    counts, skipped, done = {}, [[f, r] for f, r in folder.skipped], 0
    for n, (name, clips) in enumerate(sorted(plan.items())):
        meta = shard_metadata(out / name)
        if meta is None:
            tensors, meta = encode_shard(folder, clips, pipe.vae, pipe.text_encoder, batch)
            save_shard(out / name, tensors, meta)
            done += 1
        counts[name] = meta["count"]
        skipped += [[f, "unreadable when encoding"] for f in meta["skipped"]]
        if progress is not None:
            progress(n + 1, len(plan))
    manifest.update(complete=True, clips=sum(counts.values()), counts=counts, skipped=skipped,
                    encoded_shards=done, reused_shards=len(plan) - done)
    write_json(out / "manifest.json", manifest)
    return manifest


class LatentCache:
    """A complete cache, read lazily: `keys[i]` is item i's bucket, `fetch(indices)` its latents and text."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path} is not a latent cache (manifest.json: {e})") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.path}/manifest.json is not a {FORMAT} manifest")
        if not self.manifest.get("complete"):
            raise ValueError(f"cache {self.path} is incomplete: run `kinema cache` again with the same arguments")
        self.items: list[tuple[str, int]] = []  # (shard, row)
        self.keys: list[str] = []
        self.captions: list[str] = []
        for name in self.manifest["shards"]:
            meta = shard_metadata(self.path / name)
            if meta is None:
                raise ValueError(f"cache shard {self.path / name} is missing or unreadable")
            self.items += [(name, r) for r in range(meta["count"])]
            self.keys += [name.rsplit("-", 1)[0]] * meta["count"]
            self.captions += meta["captions"]
        if not self.items:
            raise ValueError(f"cache {self.path} holds no clips")
        self._files: dict[str, object] = {}
        with safe_open(str(self.path / "empty.safetensors"), "pt") as f:
            self.empty = f.get_tensor("text")[0].float()                         # (L, D)

    def __len__(self) -> int:
        return len(self.items)

    def _file(self, name: str):
        if name not in self._files:
            self._files[name] = safe_open(str(self.path / name), "pt")
        return self._files[name]

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw latents (b, C, T', H', W') float32 and text embeddings (b, L, D) float32 of items (one bucket)."""
        latents, text = [], []
        for i in indices:
            name, row = self.items[i]
            f = self._file(name)
            latents.append(f.get_slice("latents")[row:row + 1])
            cid = int(f.get_slice("caption_ids")[row:row + 1][0])
            text.append(f.get_slice("text")[cid:cid + 1].float())
        return torch.cat(latents).float(), torch.cat(text)

    def summary(self) -> dict:
        m = self.manifest
        return {"cache": str(self.path), "clips": len(self), "buckets": sorted(set(self.keys)),
                "skipped": len(m.get("skipped", [])), "skipped_files": m.get("skipped", [])}
