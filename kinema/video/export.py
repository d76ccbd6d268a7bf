"""Writing finished clips: MP4 (H.264 / H.265), looping GIF or a folder of PNG frames, each with a sidecar JSON.

    kind = output_kind("out.mp4")             # "mp4", "gif" or "frames" (a path ending in "/")
    save_output(video, "out.mp4", codec="h265", run={...})   # writes out.mp4 and out.json

Every write is atomic: a temp file or folder next to the target, renamed onto it when complete, removed on any
error, so a failed write leaves nothing behind. The sidecar (`out.mp4` -> `out.json`, `frames/` -> `frames.json`)
holds the run (prompt, seed, model, settings, post-processing, output); `kinema generate --from out.json` re-runs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kinema.video.io import CODECS, Video, atomic_file, write_mp4

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".mp4", ".gif")
FRAME_NAME = "frame_{:04d}.png"
_FRAME_RE = re.compile(r"frame_\d{4,}\.png")
RUN_FORMAT = 1                                # version of the sidecar layout


def output_kind(path: str | os.PathLike) -> str:
    """"mp4" or "gif" by suffix, "frames" for a path ending in a separator; ValueError otherwise."""
    raw = os.fspath(path)
    if raw.endswith(("/", os.sep)):
        return "frames"
    suffix = Path(raw).suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"output {raw} must end in .mp4 or .gif (or / for a folder of PNG frames)")
    return suffix[1:]


def sidecar_path(path: str | os.PathLike) -> Path:
    """out.mp4 -> out.json; frames/ -> frames.json (next to the folder)."""
    p = Path(path)
    return p.parent / f"{p.name}.json" if output_kind(path) == "frames" else p.with_suffix(".json")


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float, loop: int = 0) -> Path:
    """A looping GIF (loop=0: forever) of (T, H, W, 3) uint8 frames, atomically. GIF delays are whole
    centiseconds, so the frame time is rounded to 10 ms (and players slow delays under 20 ms, i.e. fps > 50).
    PIL merges identical consecutive frames into one longer frame."""
    from PIL import Image

    if fps > 50:
        log.warning("GIF at %g fps: many players show frames faster than 50 fps slower", fps)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    duration = max(10, round(100 / fps) * 10)
    with atomic_file(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=loop, duration=duration)
    return Path(path)


def is_frames_folder(path: Path) -> bool:
    """True if `path` is a folder holding nothing but frame_NNNN.png files (ours to replace)."""
    return path.is_dir() and all(_FRAME_RE.fullmatch(p.name) for p in path.iterdir())


def write_png_frames(folder: str | os.PathLike, frames: np.ndarray) -> Path:
    """frame_0000.png, frame_0001.png, ... in `folder`, atomically: written to a temp folder, then renamed. An
    existing folder is replaced only if it holds nothing but frame_NNNN.png files; otherwise ValueError."""
    from PIL import Image

    folder = Path(folder)
    if folder.exists() and not is_frames_folder(folder):
        raise ValueError(f"{folder} exists and holds more than PNG frames; choose a new or empty folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for i, frame in enumerate(frames):
            Image.fromarray(np.ascontiguousarray(frame)).save(tmp / FRAME_NAME.format(i), format="PNG")
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap_in(new: Path, folder: Path) -> None:
    """Rename `new` onto `folder`; an old frames folder is moved aside first and removed after."""
    if not folder.exists():
        os.rename(new, folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
    os.rename(folder, old / "frames")
    try:
        os.rename(new, folder)
    except BaseException:
        os.rename(old / "frames", folder)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def read_png_frames(folder: str | os.PathLike) -> np.ndarray:
    """The (T, H, W, 3) uint8 frames of a folder written by write_png_frames."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if _FRAME_RE.fullmatch(p.name))
    if not paths:
        raise ValueError(f"no frame_NNNN.png files in {folder}")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def write_output(path: str | os.PathLike, video: Video, codec: str = "h264", crf: int = 18) -> Path:
    """Write the video as the path asks (see output_kind); codec and crf apply to MP4 only."""
    kind = output_kind(path)
    if kind == "mp4":
        return write_mp4(path, video.frames, video.fps, codec=codec, crf=crf, metadata=video.metadata)
    if kind == "gif":
        return write_gif(path, video.frames, video.fps)
    return write_png_frames(path, video.frames)


def save_output(video: Video, path: str | os.PathLike, codec: str = "h264", crf: int = 18,
                run: dict | None = None) -> Path:
    """Write the video and its sidecar JSON (the run, plus what was written). The sidecar is staged first and
    renamed into place only after the video is written, so a failure leaves neither."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    text = sidecar_text(path, video.fps, video.frames.shape[:3], codec, crf, run)
    with atomic_file(sidecar_path(path)) as tmp:
        Path(tmp).write_text(text)
        write_output(path, video, codec, crf)
    return Path(path)


def sidecar_text(path: str | os.PathLike, fps: float, shape: tuple[int, int, int], codec: str, crf: int,
                 run: dict | None) -> str:
    """The sidecar JSON of an output of `shape` (frames, height, width): the run, plus what was written."""
    kind = output_kind(path)
    out = {"path": str(Path(path).resolve()), "format": kind, "fps": fps, "frames": int(shape[0]),
           "height": int(shape[1]), "width": int(shape[2])}
    if kind == "mp4":
        out.update(codec=codec, crf=crf)
    return json.dumps({"kinema_run": RUN_FORMAT, **(run or {}), "output": out}, indent=2, sort_keys=True,
                      default=str) + "\n"


def read_run(path: str | os.PathLike) -> dict:
    """A run sidecar written by save_output, as a dict; ValueError (one line) if it cannot be used."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read run file {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"run file {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "kinema_run" not in doc:
        raise ValueError(f"run file {path} is not a kinema run sidecar (no \"kinema_run\" key)")
    kinds = {"prompt": (str,), "model": (str,), "settings": (dict,), "post": (dict,), "output": (dict,),
             "image": (str, type(None)), "last_image": (str, type(None))}
    for key, ok in kinds.items():
        if key in doc and not isinstance(doc[key], ok):
            raise ValueError(f"run file {path}: {key!r} must be {' or '.join(k.__name__ for k in ok)}")
    return doc
