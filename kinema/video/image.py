"""Still images in and out: load, resize to cover, centre-crop (PIL); clear errors for unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; ValueError if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e.__class__.__name__}") from None


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (bicubic) so the image covers height x width, then centre-crop: (height, width, 3) uint8."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - height) // 2, (nw - width) // 2
    return resized[top:top + height, left:left + width]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).float().div(127.5).sub(1).permute(2, 0, 1)
