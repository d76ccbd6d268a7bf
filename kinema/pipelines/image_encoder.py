"""CLIP image tokens for Wan2.1 I2V / FLF2V: images -> (N, Li, width), the hidden states of CLIP's penultimate layer
(ViT-H/14: 257 tokens of 1280).

A frozen transformers `CLIPVisionModel`, loaded on first use from one of:
- a transformers folder (diffusers' `image_encoder/`), preprocessed by the `CLIPImageProcessor` in diffusers'
  `image_processor/` (resize the short side, centre-crop, normalise), as `WanImageToVideoPipeline.encode_image` does;
- the original release's `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (its vision tower, converted by
  `kinema.convert.wan_clip`), preprocessed as the release does (W21 `wan/modules/clip.py` `CLIPModel.visual`): the
  image in [-1, 1] resized bicubically to the model's square input (no crop), mapped to [0, 1] and normalised with
  CLIP's mean and std.
The pipelines give it the image already fitted to the video's size, so the tokens describe the first frame as the
video shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinema.video.image import image_to_tensor

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation (the release's and ViT-H's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageEncoderConfig:
    source: str                    # a transformers CLIPVisionModel folder, or the original release's CLIP .pth
    processor: str | None = None   # a CLIPImageProcessor folder; None: the original release's preprocessing
    layer: int = -2                # which hidden states are the tokens (Wan: the penultimate layer's)


class ImageEncoder:
    """Callable: list of (H, W, 3) uint8 images -> (N, Li, width) tokens on `device`."""

    def __init__(self, config: ImageEncoderConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self._model = self._processor = None

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        path = Path(self.config.source)
        if path.suffix == ".pth":
            from kinema.convert.wan_clip import load_original_clip

            self._model = load_original_clip(path, self.dtype)
        else:
            from transformers import CLIPVisionModel

            self._model = CLIPVisionModel.from_pretrained(path, local_files_only=True, torch_dtype=self.dtype)
            self._model = self._model.eval().requires_grad_(False)
        if self.config.processor is not None:
            from transformers import CLIPImageProcessor

            self._processor = CLIPImageProcessor.from_pretrained(self.config.processor, local_files_only=True)
        log.info("loaded image encoder from %s", path)

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """(N, 3, S, S) normalised model input for (H, W, 3) uint8 images."""
        if self._processor is not None:
            return self._processor(images=list(images), return_tensors="pt")["pixel_values"]
        size = self._model.config.image_size
        x = torch.stack([image_to_tensor(im) for im in images])                     # (N, 3, H, W) in [-1, 1]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        self._ensure_loaded()
        self._model.to(self.device)  # where the pipeline's memory plan puts it (beside the text encoder)
        pixels = self.pixels(images).to(self.device, next(self._model.parameters()).dtype)
        out = self._model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[self.config.layer]                                 # (N, Li, width)
