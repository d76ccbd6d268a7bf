"""Image-to-video through conditioning channels (Wan2.1 I2V-14B, FLF2V-14B): the given image (and, for FLF2V, the
last image) enters the DiT as extra input channels at every step and, through CLIP, as image tokens that every
block's cross-attention attends to beside the text.

Per video (W21 `wan/image2video.py`; diffusers `WanImageToVideoPipeline.prepare_latents`):

    condition video  [image, zeros x (F - 1)] in [-1, 1] (FLF2V: [first, zeros x (F - 2), last])
                     -> VAE encode (distribution mode), normalised -> (C, T', H', W')
    mask             1 on the given video frames, 0 elsewhere; frame 0 repeated 4x, so the 4 + (F - 1) = 4 T' entries
                     fold into (4, T'): latent frame 0 has all 4 channels 1 (FLF2V's last frame: channel 3 of the
                     last latent frame), broadcast over (H', W')
    DiT input        cat([noisy latents (C), mask (4), condition latents (C)], channels) = 2 C + 4 (Wan: 36)
    CLIP tokens      (1, 257, 1280) penultimate-layer states of the image (FLF2V: (1, 514, 1280), first then last),
                     the same in both branches of classifier-free guidance

Guidance is the reference pipelines': v = v_uncond + g (v_cond - v_uncond), the negative prompt in the unconditional
branch and the image conditioning in both. The images are fitted to the output size (resize to cover, centre-crop)
before the VAE and CLIP see them. A model with conditioning channels but no image branch (no CLIP) runs the same way
without the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kinema.dit.model import DiT
from kinema.pipelines.image_encoder import ImageEncoder
from kinema.pipelines.text_to_video import GenerationSettings, TextToVideoPipeline
from kinema.text.encoder import TextEncoder
from kinema.vae.model import VideoVAE
from kinema.video.image import fit_image, image_to_tensor


@dataclass(frozen=True)
class ImageCondition:
    """What an image-to-video DiT is conditioned on besides the text, for a batch of B videos."""
    channels: torch.Tensor               # (B, 4 + C, T', H', W') the mask, then the condition video's latents
    tokens: torch.Tensor | None = None   # (B, Li, image_dim) CLIP tokens; None for a DiT without an image branch


def condition_mask(frames: int, shape: tuple[int, int, int], stride: int, last: bool) -> torch.Tensor:
    """(stride, T', H', W') mask of the given video frames (the first; the last too when `last`), packed as Wan
    packs it: frame 0 repeated `stride` times, then `stride` video frames per latent frame."""
    t, h, w = shape
    given = torch.zeros(frames)
    given[0] = 1.0
    if last:
        given[-1] = 1.0
    entries = torch.cat([given[:1].repeat(stride), given[1:]])                       # (stride * T',)
    return entries.view(t, stride).T[:, :, None, None].expand(stride, t, h, w)


class ImageToVideoPipeline(TextToVideoPipeline):
    """`pipe(prompt, image=IMG)`; FLF2V models also take `last_image=`. The DiT takes 2 C + 4 latent channels and
    gives C; `image_encoder` is the CLIP of a DiT with an image branch (None for one without)."""

    def __init__(self, text_encoder: TextEncoder, vae: VideoVAE, dit: DiT, image_encoder: ImageEncoder | None,
                 defaults: GenerationSettings, name: str = "custom", device: str | torch.device = "cpu"):
        super().__init__(text_encoder, vae, dit, defaults, name, device)
        z, c = vae.config.z_dim, dit.config
        self.mask_channels = c.in_channels - 2 * z
        if self.mask_channels != vae.config.temporal_compression or c.out_channels != z:
            raise ValueError(f"an image-to-video DiT takes 2 x {z} latent + {vae.config.temporal_compression} mask "
                             f"channels and gives {z}; this one takes {c.in_channels} and gives {c.out_channels}")
        if (image_encoder is None) != (c.image_dim is None):
            raise ValueError("a DiT with an image branch needs an image encoder (CLIP), and only such a DiT takes one")
        self.image_encoder = image_encoder
        self.two_images = c.image_pos_len is not None  # FLF2V: first and last image

    def check_images(self, first, last) -> None:
        """ValueError unless the images are the ones this model takes: a first image (FLF2V: and a last one)."""
        if first is None:
            raise ValueError(f"{self.name} is an image-to-video model: give it an image (--image)")
        if self.two_images != (last is not None):
            raise ValueError("this model (FLF2V) needs a first and a last image (--image, --last-image)"
                             if self.two_images else "this model takes one image; a last image needs an FLF2V model")

    @torch.no_grad()
    def generate(self, prompts: list[str], callback=None, seeds: list[int] | None = None, image=None,
                 last_image=None, save_latents: str | None = None, **overrides):
        self.check_images(image, last_image)  # before any encoder runs
        return super().generate(prompts, callback, seeds, image, last_image, save_latents, **overrides)

    @torch.no_grad()
    def encode_keyframes(self, s: GenerationSettings, batch: int, first=None, last=None) -> ImageCondition:
        """The conditioning of `batch` videos on the image `first` (and `last`), (H, W, 3) uint8 arrays."""
        self.check_images(first, last)
        images = [fit_image(im, s.height, s.width) for im in (first, last) if im is not None]
        video = torch.zeros(1, 3, s.frames, s.height, s.width)                       # (1, 3, F, H, W) in [-1, 1]
        video[:, :, 0] = image_to_tensor(images[0])
        if last is not None:
            video[:, :, -1] = image_to_tensor(images[1])
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(video.to(self.device, vae_dtype)).float()          # (1, C, T', H', W')
        mask = condition_mask(s.frames, latents.shape[2:], self.mask_channels, last is not None).to(latents)
        channels = torch.cat([mask[None], latents], dim=1).expand(batch, -1, -1, -1, -1)
        tokens = None
        if self.image_encoder is not None:
            tokens = self.image_encoder(images).to(self.device).flatten(0, 1)[None]  # (1, Li, width), images in turn
            tokens = tokens.expand(batch, -1, -1)
        return ImageCondition(channels, tokens)

    def denoise(self, noise, text, negative, s: GenerationSettings, callback=None, keyframes=None,
                kv_cache=None) -> torch.Tensor:
        """Sample latents (B, C, T', H', W') from noise, conditioned on `keyframes` (an `ImageCondition`)."""
        if not isinstance(keyframes, ImageCondition):
            raise ValueError(f"{self.name} is an image-to-video model: give it an image (--image)")
        if kv_cache is not None:
            raise ValueError("image-to-video Wan models do not stream (no causal DiT)")
        model = self.guided_model([self.conditioned_dit(noise.dtype, keyframes)], text, negative, s)
        return self.sample(model, noise, s, callback)

    def conditioned_dit(self, dtype: torch.dtype, cond: ImageCondition):
        """The DiT as a function of (x, t, text) with the conditioning channels and tokens attached; the batch may
        be a multiple of the conditioning's (classifier-free guidance runs both branches as one batch)."""
        dit = self._dit_in(dtype)

        def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            k = x.shape[0] // cond.channels.shape[0]
            channels = cond.channels.to(x.dtype).repeat(k, 1, 1, 1, 1)
            image = None if cond.tokens is None else cond.tokens.repeat(k, 1, 1)
            return dit(torch.cat([x, channels], dim=1), t, context, image=image)
        return fn
