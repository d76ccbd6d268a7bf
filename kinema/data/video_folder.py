"""A folder of captioned videos (and images) as training clips.

    data/
      cat.mp4  cat.txt            sidecar caption: same name, .txt
      dog.webm                    ... or a metadata.jsonl ({"file_name": "dog.webm", "text": "a dog"} per line)
      sky.png                     ... or a metadata.csv (columns file_name, text); an image is a 1-frame video

Videos (.mp4 .mov .webm .mkv) are decoded with PyAV. Each file is assigned a bucket (frames, height, width): the
aspect-ratio bucket nearest its own shape (each about size x size pixels, sides multiples of `multiple`) and the
longest allowed length 1 + 4k that fits in it after frame-rate resampling. A clip is resized to cover its bucket,
centre-cropped, and returned as (3, T, H, W) in [-1, 1].

A file that cannot be read (corrupt, truncated, no video stream, no caption) is skipped with one warning line and
listed in `VideoFolder.skipped`; it never stops a run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FILE_KEYS = ("file_name", "file", "path", "video", "image")
CAPTION_KEYS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class VideoDataConfig:
    frames: int = 17                              # longest clip, 1 + 4k frames
    size: int = 64                                # the square bucket's side; other buckets keep about size^2 pixels
    aspect_ratios: tuple[float, ...] = (1.0,)     # width / height of the buckets
    frame_buckets: tuple[int, ...] | None = None  # allowed clip lengths (1 + 4k); None: every 1 + 4k <= frames
    fps: float | None = None                      # resample clips to this frame rate; None: each file's own rate
    multiple: int = 16                            # bucket sides are multiples of this (VAE compression x DiT patch)
    temporal_compression: int = 4                 # clip lengths are 1 + this * k

    def __post_init__(self):
        tc = self.temporal_compression
        for n in (self.frames, *(self.frame_buckets or ())):
            if n < 1 or (n - 1) % tc:
                raise ValueError(f"clip lengths must be 1 + {tc}k, got {n}")
        if self.size < self.multiple or any(r <= 0 for r in self.aspect_ratios) or not self.aspect_ratios:
            raise ValueError(f"size must be >= {self.multiple} and aspect ratios positive")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(sorted(self.frame_buckets or range(1, self.frames + 1, self.temporal_compression)))

    def bucket_sizes(self) -> list[tuple[int, int]]:
        """(height, width) per aspect ratio, each side a multiple of `multiple`, about size^2 pixels."""
        m = self.multiple
        snap = lambda v: max(m, int(round(v / m)) * m)  # noqa: E731
        return [(snap(self.size / math.sqrt(r)), snap(self.size * math.sqrt(r))) for r in self.aspect_ratios]


@dataclass(frozen=True)
class MediaInfo:
    path: str            # the file
    caption: str         # its caption
    width: int           # source frame size
    height: int
    fps: float           # source frame rate (0 for images)
    num_frames: int      # source frame count (from the header; 1 for images)


def parse_ratio(text: str) -> float:
    """'16:9', '1.5' or '1' -> width / height."""
    try:
        a, _, b = text.partition(":")
        value = float(a) / float(b) if b else float(a)
    except ValueError:
        raise ValueError(f"bad aspect ratio {text!r} (expected W:H or a number)") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"bad aspect ratio {text!r}")
    return value


def _metadata_rows(root: Path) -> list[dict]:
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.exists():
        rows = []
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{jsonl}:{n}: not JSON: {e.msg}") from None
        return rows
    if csv_path.exists():
        with open(csv_path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return []


def read_captions(root: Path) -> dict[str, str]:
    """Captions from metadata.jsonl / metadata.csv, keyed by the path relative to `root` (POSIX)."""
    captions = {}
    for n, row in enumerate(_metadata_rows(root), 1):
        name = next((row[k] for k in FILE_KEYS if isinstance(row, dict) and row.get(k)), None)
        text = next((row[k] for k in CAPTION_KEYS if isinstance(row, dict) and row.get(k) is not None), None)
        if name is None or text is None:
            raise ValueError(f"metadata row {n} in {root} needs a file ({'/'.join(FILE_KEYS)}) and a caption "
                             f"({'/'.join(CAPTION_KEYS)})")
        captions[Path(str(name)).as_posix()] = str(text)
    return captions


def probe(path: Path) -> tuple[int, int, float, int]:
    """(width, height, fps, frames) from the file's header; ValueError if it is not a readable image or video."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.width, im.height, 0.0, 1
        except OSError as e:
            raise ValueError(f"not a readable image ({e})") from None
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = stream.frames or int((container.duration or 0) / 1e6 * fps)
            width, height = stream.codec_context.width, stream.codec_context.height
    except (av.error.FFmpegError, IndexError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"not a readable video ({type(e).__name__}: {e})") from None
    if not (width > 0 and height > 0 and fps > 0 and frames > 0):
        raise ValueError(f"no usable video stream ({width}x{height}, {fps:g} fps, {frames} frames)")
    return width, height, fps, frames


def available_frames(info: MediaInfo, fps: float | None) -> int:
    """Frames a clip can have after resampling to `fps` (None: no resampling)."""
    if info.fps == 0 or fps is None:
        return info.num_frames
    return int(math.floor((info.num_frames - 1) * fps / info.fps + 1e-6)) + 1


def assign_bucket(info: MediaInfo, cfg: VideoDataConfig) -> tuple[int, int, int] | None:
    """(frames, height, width) of the file's clips, or None when it is shorter than every allowed length."""
    n = available_frames(info, cfg.fps)
    fitting = [length for length in cfg.lengths if length <= n]
    if not fitting:
        return None
    sizes = cfg.bucket_sizes()
    ratio = math.log(info.width / info.height)
    h, w = min(sizes, key=lambda hw: abs(math.log(hw[1] / hw[0]) - ratio))
    return fitting[-1], h, w


def clip_indices(info: MediaInfo, length: int, fps: float | None, position: float) -> list[int]:
    """Source frame indices of a clip of `length` frames at `fps`; position in [0, 1] picks where it starts."""
    step = 1.0 if info.fps == 0 or fps is None else info.fps / fps
    span = (length - 1) * step
    start = position * max(0.0, info.num_frames - 1 - span)
    return [min(info.num_frames - 1, int(round(start + i * step))) for i in range(length)]


def decode_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (sorted, repeats allowed) as (T, H, W, 3) uint8; ValueError if they cannot be read."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(path) as im:
                frame = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise ValueError(f"not a readable image ({e})") from None
        return np.stack([frame] * len(indices))
    import av

    wanted, got = sorted(set(indices)), {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise ValueError(f"decoding failed ({type(e).__name__}: {e})") from None
    if len(got) < len(wanted):
        raise ValueError(f"truncated: {len(got)} of the {len(wanted)} frames needed could be decoded")
    return np.stack([got[i] for i in indices])


def resize_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(T, H0, W0, 3) uint8 -> (3, T, height, width) float in [-1, 1]: scaled to cover, then centre-cropped."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()                       # (T, 3, H0, W0)
    scale = max(height / x.shape[2], width / x.shape[3])
    size = (max(height, round(x.shape[2] * scale)), max(width, round(x.shape[3] * scale)))
    if size != tuple(x.shape[2:]):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[:, :, top:top + height, left:left + width]                                # (T, 3, height, width)
    return x.clamp(0, 255).div(127.5).sub(1).permute(1, 0, 2, 3).contiguous()        # (3, T, height, width)


def find_media(root: Path) -> list[Path]:
    suffixes = VIDEO_SUFFIXES + IMAGE_SUFFIXES
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


class VideoFolder:
    """The usable files of a folder, each with its bucket; `skipped` lists (file, reason) of the others."""

    def __init__(self, root: str | Path, config: VideoDataConfig):
        self.root, self.config = Path(root), config
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist")
        self.items: list[MediaInfo] = []
        self.buckets: list[tuple[int, int, int]] = []
        self.skipped: list[tuple[str, str]] = []
        self._failed: set[int] = set()  # items that passed the scan but failed to decode
        self._scan()
        if not self.items:
            raise ValueError(f"no usable videos or images in {self.root} ({len(self.skipped)} skipped)")

    def skip(self, path: str | Path, reason: str) -> None:
        """Record a file that cannot be used, with one warning line."""
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((str(path), reason))

    def _caption(self, path: Path, captions: dict[str, str]) -> str | None:
        rel = path.relative_to(self.root).as_posix()
        if rel in captions:
            return captions[rel]
        sidecar = path.with_suffix(".txt")
        return sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else None

    def _scan(self) -> None:
        captions = read_captions(self.root)
        for path in find_media(self.root):
            caption = self._caption(path, captions)
            if caption is None:
                self.skip(path, "no caption (no sidecar .txt and not in metadata.jsonl/.csv)")
                continue
            try:
                info = MediaInfo(str(path), caption, *probe(path))
            except ValueError as e:
                self.skip(path, str(e))
                continue
            bucket = assign_bucket(info, self.config)
            if bucket is None:
                self.skip(path, f"too short: {available_frames(info, self.config.fps)} frames")
                continue
            self.items.append(info)
            self.buckets.append(bucket)
        log.info("%s: %d files in %d buckets, %d skipped", self.root, len(self.items), len(set(self.buckets)),
                 len(self.skipped))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int, position: float = 0.0) -> torch.Tensor:
        """Clip of item i as (3, T, H, W) in [-1, 1]; ValueError if the file turns out unreadable."""
        info, (frames, h, w) = self.items[i], self.buckets[i]
        indices = clip_indices(info, frames, self.config.fps, position)
        return resize_crop(decode_frames(Path(info.path), indices), h, w)

    def try_load(self, i: int, position: float = 0.0) -> torch.Tensor | None:
        """`load`, or None (with one warning line and an entry in `skipped`, the first time) if it fails."""
        if i in self._failed:
            return None
        try:
            return self.load(i, position)
        except ValueError as e:
            self._failed.add(i)
            self.skip(self.items[i].path, str(e))
            return None

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for f, h, w in self.buckets:
            counts[f"{f}x{h}x{w}"] = counts.get(f"{f}x{h}x{w}", 0) + 1
        return {"files": len(self.items), "buckets": counts, "skipped": len(self.skipped),
                "skipped_files": [{"file": f, "reason": r} for f, r in self.skipped]}
