"""A pixel loss for the DiT, through the frozen VAE decoder (`kinema train --pixel-loss`).

The flow-matching loss weighs every latent direction alike, but the decoder does not: some small latent
directions decide whether a square keeps its corners (measured: docs/models/shapes.md, "What limits shape"). So at
low noise, where the DiT's prediction of the clean latents is meant to be exact, its prediction is decoded and
compared with the decoding of the true latents, with extra weight on the object:

    x0_hat = x_t - t * v                                        (kinema.flow.convention)
    loss   = weighted L1 + L2 of decode(x0_hat) - decode(x0)    per sample, for samples with t < t_max

Decoding the true latents (not the original pixels) keeps the target one the DiT can reach: the VAE's own
reconstruction. Gradients flow through the frozen decoder into the DiT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kinema.flow.convention import x0_from_velocity
from kinema.vae.model import VideoVAE


@dataclass(frozen=True)
class DecodedLoss:
    vae: VideoVAE              # frozen; its statistics normalise the latents the DiT trains on
    weight: float              # scale of this loss against the flow-matching loss
    t_max: float = 0.5         # only samples whose time is below this (low noise) get it
    max_samples: int = 8       # at most this many samples per micro-batch (decoding is the cost)
    object_weight: float = 8.0  # extra weight on pixels that differ from the frame's background

    def __call__(self, x0: torch.Tensor, x_t: torch.Tensor, v: torch.Tensor, t_frame: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,), zero for the samples not picked. x0, x_t, v (B, C, T', H', W') normalised;
        t_frame (B, T') each latent frame's time (0 on given frames); t (B,) the sample's time."""
        picked = torch.nonzero(t < self.t_max).flatten()[: self.max_samples]
        out = torch.zeros(x0.shape[0], dtype=v.dtype, device=v.device)
        if picked.numel() == 0:
            return out
        x0_hat = x0_from_velocity(x_t[picked], v[picked], t_frame[picked][:, None, :, None, None])
        with torch.no_grad():
            target = self.vae.decode_raw(self.vae.denormalise(x0[picked]), chunked=False)   # (b, 3, T, H, W)
        recon = self.vae.decode_raw(self.vae.denormalise(x0_hat), chunked=False)
        w = object_weights(target, self.object_weight)
        err = recon - target
        per = (w * (err.abs() + err.square())).mean(dim=(1, 2, 3, 4))                     # (b,)
        return out.index_put((picked,), per)


def object_weights(video: torch.Tensor, boost: float, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, T, H, W): 1, plus `boost` where a pixel differs from its frame's median colour (the background, which
    covers most of a shapes frame) by more than `threshold` (video in [-1, 1])."""
    bg = video.flatten(3).median(dim=3).values[..., None, None]                        # (B, 3, T, 1, 1)
    return 1.0 + boost * ((video - bg).abs().sum(dim=1, keepdim=True) > threshold).to(video.dtype)
