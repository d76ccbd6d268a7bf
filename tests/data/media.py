"""Real-format test media made with PyAV: small videos in several containers, images, and broken files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CODEC_FOR = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}


def moving_box(frames: int, height: int, width: int, colour=(220, 40, 40), seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a box sliding right on a dark background; frame i is recognisable by the box's x."""
    out = np.full((frames, height, width, 3), 20, np.uint8)
    side = max(2, height // 4)
    for i in range(frames):
        x = int(i * (width - side) / max(1, frames - 1))
        out[i, height // 2 - side // 2: height // 2 + side // 2, x:x + side] = colour
    return out


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        stream = c.add_stream(CODEC_FOR[path.suffix], rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(stream.encode())
    return path


def write_image(path: Path, frame: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(frame).save(path)
    return path


def make_folder(root: Path, n: int = 4, frames: int = 9, size: tuple[int, int] = (32, 32), corrupt: bool = True,
                suffixes=(".mp4", ".mov", ".mkv", ".webm")) -> Path:
    """n captioned videos (sidecar .txt) cycling through `suffixes`, plus one corrupt .mp4 when `corrupt`."""
    colours = [(220, 40, 40), (40, 80, 220), (40, 180, 60), (230, 210, 40)]
    for i in range(n):
        path = root / f"clip{i}{suffixes[i % len(suffixes)]}"
        write_video(path, moving_box(frames, *size, colours[i % 4]))
        path.with_suffix(".txt").write_text(f"a box number {i} sliding right")
    if corrupt:
        (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
        (root / "broken.txt").write_text("a broken file")
    return root
