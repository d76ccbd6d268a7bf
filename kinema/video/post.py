"""Post-processing of generated clips: colour adjustments, LUT grading, sharpening, upscaling, frame interpolation.

Every operation is a small pure function over all frames at once: a float tensor (T, H, W, 3) in [0, 1] in, the
same kind out (clamped to [0, 1]). `postprocess(frames, PostSettings(...))` applies them in ONE fixed order:

    1. contrast      (x - 0.5) * contrast + 0.5                 neutral 1
    2. brightness    x * brightness                             neutral 1
    3. saturation    luma + (x - luma) * saturation (Rec. 709)  neutral 1
    4. temperature   white balance: R * (1 + 0.25 t), B * (1 - 0.25 t)   neutral 0 (t > 0 warmer, < 0 cooler)
    5. LUT           3D LUT from a .cube file, trilinear (kinema.video.lut)
    6. sharpen       unsharp mask: x + amount * (x - gaussian_blur(x, radius))   neutral amount 0
    7. upscale       x2 / x4: Lanczos (PIL, per frame and channel) or bicubic (torch), then light sharpening
    8. interpolate   x2 frames: a blended midpoint between each pair, T -> 2T - 1 frames at 2x fps (same duration)

Limits: contrast, brightness, saturation in [0, 4]; temperature in [-1, 1]; sharpen amount in [0, 5] and radius in
(0, 10] px; upscaled frames at most MAX_UPSCALED_SIDE (4096) px on each side. Outside them: ValueError.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from kinema.video.io import Video
from kinema.video.lut import Lut3D, apply_lut, load_cube

MAX_UPSCALED_SIDE = 4096                     # px, per side of an upscaled frame
UPSCALE_FACTORS = (1, 2, 4)
UPSCALE_METHODS = ("lanczos", "bicubic")
UPSCALE_SHARPEN = 0.25                       # unsharp-mask amount after upscaling (radius: factor / 2 px)
TEMPERATURE_GAIN = 0.25                      # red / blue gain change at temperature +-1
REC709 = (0.2126, 0.7152, 0.0722)


@dataclass(frozen=True)
class PostSettings:
    """Post-processing of a clip; the defaults change nothing. Applied in the order of the fields."""

    contrast: float = 1.0          # x around mid-grey 0.5: >1 more contrast, <1 less, 0 flat grey; [0, 4]
    brightness: float = 1.0        # x multiplier: >1 brighter, <1 darker, 0 black; [0, 4]
    saturation: float = 1.0        # x chroma around Rec. 709 luma: >1 more vivid, 0 greyscale; [0, 4]
    temperature: float = 0.0       # white balance: >0 warmer (more red, less blue), <0 cooler; [-1, 1]
    lut: str | None = None         # path of a 3D .cube LUT for colour grading; None = none
    sharpen: float = 0.0           # unsharp-mask amount: 0 off, 0.5 moderate, 1+ strong; [0, 5]
    sharpen_radius: float = 1.0    # Gaussian sigma of the unsharp mask, px; (0, 10]
    upscale: int = 1               # spatial factor 1 (off), 2 or 4; output side <= MAX_UPSCALED_SIDE
    upscale_method: str = "lanczos"  # "lanczos" (PIL) or "bicubic" (torch)
    interpolate: bool = False      # double the frame rate: T -> 2T - 1 frames, fps x 2

    def validate(self) -> "PostSettings":
        """Self, or ValueError naming the first setting out of range."""
        for name in ("contrast", "brightness", "saturation"):
            _in_range(name, getattr(self, name), 0, 4)
        _in_range("temperature", self.temperature, -1, 1)
        _in_range("sharpen", self.sharpen, 0, 5)
        _in_range("sharpen_radius", self.sharpen_radius, 1e-3, 10)
        if self.upscale not in UPSCALE_FACTORS:
            raise ValueError(f"upscale must be one of {UPSCALE_FACTORS}, got {self.upscale}")
        if self.upscale_method not in UPSCALE_METHODS:
            raise ValueError(f"upscale method must be one of {UPSCALE_METHODS}, got {self.upscale_method!r}")
        return self

    @property
    def is_identity(self) -> bool:
        return self == replace(PostSettings(), sharpen_radius=self.sharpen_radius, upscale_method=self.upscale_method)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PostSettings":
        """From a dict such as to_dict() gives (e.g. a run's sidecar JSON), type-checked and validated."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown post-processing settings {unknown}")
        kinds = {"lut": (str, type(None)), "upscale_method": (str,), "interpolate": (bool,), "upscale": (int,)}
        for k, v in d.items():
            ok = kinds.get(k, (int, float))
            if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
                raise ValueError(f"post-processing setting {k} has the wrong type: {v!r}")
        return cls(**d).validate()


def _in_range(name: str, v: float, lo: float, hi: float) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {v}")


# ---- colour --------------------------------------------------------------------------------------------------------
def adjust_contrast(x: torch.Tensor, contrast: float) -> torch.Tensor:
    """Scale the distance from mid-grey 0.5 (a fixed pivot: no flicker from per-frame statistics)."""
    return ((x - 0.5) * contrast + 0.5).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, brightness: float) -> torch.Tensor:
    """Multiply all channels (black stays black)."""
    return (x * brightness).clamp(0, 1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(..., 1) Rec. 709 luma of (..., 3) RGB."""
    return (x * x.new_tensor(REC709)).sum(-1, keepdim=True)


def adjust_saturation(x: torch.Tensor, saturation: float) -> torch.Tensor:
    """Scale the chroma around each pixel's luma (0 = greyscale)."""
    y = luma(x)
    return (y + (x - y) * saturation).clamp(0, 1)


def adjust_temperature(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """White-balance shift: warmer (>0) raises red and lowers blue, cooler (<0) the reverse."""
    g = TEMPERATURE_GAIN * temperature
    return (x * x.new_tensor((1 + g, 1.0, 1 - g))).clamp(0, 1)


# ---- detail --------------------------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (T, H, W, C) frames, edges replicated."""
    t, h, w, c = x.shape
    r = max(1, math.ceil(3 * sigma))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-k ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = x.permute(0, 3, 1, 2).reshape(t * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(t, c, h, w).permute(0, 2, 3, 1)


def sharpen(x: torch.Tensor, amount: float, radius: float = 1.0) -> torch.Tensor:
    """Unsharp mask: add `amount` times the detail above a Gaussian blur of sigma `radius` px."""
    if amount == 0:
        return x
    return (x + amount * (x - gaussian_blur(x, radius))).clamp(0, 1)


# ---- size and time -------------------------------------------------------------------------------------------------
def check_upscale(height: int, width: int, factor: int) -> None:
    """ValueError if `factor` is not 1, 2 or 4, or the upscaled frame would exceed MAX_UPSCALED_SIDE."""
    if factor not in UPSCALE_FACTORS:
        raise ValueError(f"upscale factor must be one of {UPSCALE_FACTORS}, got {factor}")
    if max(height, width) * factor > MAX_UPSCALED_SIDE:
        raise ValueError(f"upscaling {width}x{height} by {factor} gives {width * factor}x{height * factor}; "
                         f"the limit is {MAX_UPSCALED_SIDE} px per side")


def upscale(x: torch.Tensor, factor: int, method: str = "lanczos") -> torch.Tensor:
    """Resize (T, H, W, 3) frames by `factor` (Lanczos via PIL or bicubic via torch), then sharpen lightly."""
    t, h, w, c = x.shape
    check_upscale(h, w, factor)
    if factor == 1:
        return x
    if method == "lanczos":
        from PIL import Image

        planes = x.permute(0, 3, 1, 2).reshape(t * c, h, w).float().cpu().numpy()
        big = [np.asarray(Image.fromarray(p).resize((w * factor, h * factor), Image.Resampling.LANCZOS))
               for p in planes]
        y = torch.from_numpy(np.stack(big)).to(x.device, x.dtype).reshape(t, c, h * factor, w * factor)
    elif method == "bicubic":
        y = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=factor, mode="bicubic", align_corners=False)
    else:
        raise ValueError(f"upscale method must be one of {UPSCALE_METHODS}, got {method!r}")
    return sharpen(y.permute(0, 2, 3, 1).clamp(0, 1), UPSCALE_SHARPEN, factor / 2)


def interpolate_frames(x: torch.Tensor) -> torch.Tensor:
    """Double the frame rate: insert the blend of each pair of neighbours, T -> 2T - 1 frames (play at 2x fps)."""
    t = x.shape[0]
    out = x.new_empty((max(2 * t - 1, t), *x.shape[1:]))
    out[0::2] = x
    out[1::2] = (x[:-1] + x[1:]) / 2
    return out


# ---- the whole stage -----------------------------------------------------------------------------------------------
def output_fps(fps: float, s: PostSettings) -> float:
    return fps * 2 if s.interpolate else fps


def postprocess(frames, s: PostSettings, lut: Lut3D | None = None):
    """Apply `s` in the documented order to a float tensor (T, H, W, 3) in [0, 1] (returns the same kind) or to a
    uint8 Video (returns a Video with fps doubled by interpolation and the settings in metadata["post"]).
    `lut` may be given pre-loaded; otherwise s.lut is read."""
    if isinstance(frames, Video):
        return _postprocess_video(frames, s, lut)
    s.validate()
    x = frames
    if s.contrast != 1:
        x = adjust_contrast(x, s.contrast)
    if s.brightness != 1:
        x = adjust_brightness(x, s.brightness)
    if s.saturation != 1:
        x = adjust_saturation(x, s.saturation)
    if s.temperature != 0:
        x = adjust_temperature(x, s.temperature)
    if s.lut is not None:
        x = apply_lut(x, lut if lut is not None else load_cube(s.lut))
    x = sharpen(x, s.sharpen, s.sharpen_radius)
    if s.upscale != 1:
        x = upscale(x, s.upscale, s.upscale_method)
    if s.interpolate:
        x = interpolate_frames(x)
    return x


def _postprocess_video(video: Video, s: PostSettings, lut: Lut3D | None) -> Video:
    if s.validate().is_identity:
        return video
    x = torch.from_numpy(np.ascontiguousarray(video.frames)).float().div(255)
    y = postprocess(x, s, lut)
    frames = y.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    meta = {**video.metadata, "post": json.dumps(s.to_dict(), sort_keys=True)}
    return Video(frames, output_fps(video.fps, s), meta)
