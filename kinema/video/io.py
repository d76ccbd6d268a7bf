"""Video objects and files: frames as uint8 arrays, MP4 (H.264 / H.265) through PyAV, written atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kinema.atomic import atomic_path, temp_beside

CODECS = {"h264": "libx264", "h265": "libx265"}


@dataclass
class Video:
    """A clip: frames (T, H, W, 3) uint8 RGB at `fps`, plus free-form metadata (prompt, seed, model, ...)."""

    frames: np.ndarray
    fps: float = 8.0
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_tensor(cls, video: torch.Tensor, fps: float = 8.0, metadata: dict | None = None) -> "Video":
        """From (3, T, H, W) or (1, 3, T, H, W) in [-1, 1]."""
        if video.ndim == 5:
            video = video[0]
        frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return cls(frames.permute(1, 2, 3, 0).cpu().numpy(), fps, dict(metadata or {}))

    def to_tensor(self) -> torch.Tensor:
        """(1, 3, T, H, W) float in [-1, 1]."""
        return torch.from_numpy(self.frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def save(self, path: str | Path, codec: str = "h264", crf: int = 18) -> Path:
        return write_mp4(path, self.frames, self.fps, codec=codec, crf=crf, metadata=self.metadata)


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True) if not path.parent.exists() else None
    return temp_beside(path.with_name(path.stem), suffix=path.suffix or ".tmp")


def atomic_file(path: str | Path):
    """Yield a temp file path next to `path` (with its suffix); on success it is renamed onto `path`, on any error
    removed."""
    return atomic_path(path, keep_suffix=True)


class Mp4Writer:
    """Encodes frames to an MP4 (yuv420p) as they come (streaming generation); the file appears at `path` only
    when it is complete (temp file, then rename on close), and not at all if writing fails.

        with Mp4Writer(path, fps=8) as out:
            for frames in pieces:   # (T, H, W, 3) uint8
                out.write(frames)
    """

    def __init__(self, path: str | Path, fps: float, codec: str = "h264", crf: int = 18,
                 metadata: dict | None = None):
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.metadata, self.container, self.stream, self.frames = metadata or {}, None, None, 0
        fd, self.tmp = _atomic_target(self.path)
        os.close(fd)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.close(ok=kind is None)

    def _open(self, height: int, width: int) -> None:
        import av

        self.container = av.open(self.tmp, mode="w", format="mp4", options={"movflags": "use_metadata_tags"})
        for k, v in self.metadata.items():
            self.container.metadata[str(k)] = str(v)
        stream = self.container.add_stream(CODECS[self.codec], rate=_fps_fraction(self.fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf)}
        if self.codec == "h265":
            stream.codec_tag = "hvc1"  # Apple players open hvc1-tagged HEVC only
            # x265's SIMD code corrupts the heap on some narrow frames (seen at widths 40 and 48: abort);
            # frames that small encode in no time without it
            stream.options["x265-params"] = "log-level=error" + (":asm=0" if width < 64 else "")
        self.stream = stream

    def write(self, frames: np.ndarray) -> None:
        """Encode frames (T, H, W, 3) uint8."""
        import av

        if self.container is None:
            self._open(frames.shape[1], frames.shape[2])
        for frame in frames:
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                             format="rgb24")))
        self.frames += len(frames)

    def close(self, ok: bool = True) -> None:
        try:
            if self.container is not None:
                if ok:
                    self.container.mux(self.stream.encode())
                self.container.close()
            if ok and self.frames:
                os.replace(self.tmp, self.path)
        finally:
            Path(self.tmp).unlink(missing_ok=True)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, codec: str = "h264", crf: int = 18,
              metadata: dict | None = None) -> Path:
    """Encode frames (T, H, W, 3) uint8 to an MP4 (yuv420p) at `path`, atomically (temp file, then rename)."""
    with Mp4Writer(path, fps, codec, crf, metadata) as out:
        out.write(frames)
    return Path(path)


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def read_video(path: str | Path) -> Video:
    """Decode a video file to RGB frames; raises ValueError if it cannot be read."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 8)
            metadata = dict(container.metadata)
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise ValueError(f"cannot read video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return Video(np.stack(frames), fps, metadata)
