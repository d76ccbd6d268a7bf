"""Two-expert text-to-video (Wan 2.2 A14B): a high-noise DiT for t >= boundary, a low-noise DiT below it.

The pipeline is the text-to-video pipeline with a second DiT: `dit` is the high-noise expert (diffusers'
`transformer`, the release's `high_noise_model/`), `dit_2` the low-noise one (`transformer_2`, `low_noise_model/`).
Each expert gets its own classifier-free guidance (`guidance` / `guidance_2`, as diffusers' `guidance_scale` /
`guidance_scale_2`), and `kinema.flow.experts.switch_experts` makes the two one velocity function for the sampler.
A kinema model folder holds a two-expert model as `dit_2.safetensors` and a boundary (`kinema experts`); causal
experts stream, each with its own KV cache. Experts may differ in depth and width, not in the latents they take.
"""

from __future__ import annotations

import torch

from kinema.dit.model import DiT
from kinema.flow.experts import switch_experts
from kinema.pipelines.text_to_video import GenerationSettings, TextToVideoPipeline
from kinema.text.encoder import TextEncoder
from kinema.vae.model import VideoVAE


class TwoExpertPipeline(TextToVideoPipeline):
    def __init__(self, text_encoder: TextEncoder, vae: VideoVAE, dit: DiT, dit_2: DiT, boundary: float,
                 defaults: GenerationSettings, name: str = "custom", device: str | torch.device = "cpu"):
        super().__init__(text_encoder, vae, dit, defaults, name, device)
        if dit_2.config.patch_size != dit.config.patch_size or dit_2.config.in_channels != dit.config.in_channels:
            raise ValueError("the two experts must take the same latents (in_channels, patch_size)")
        self.dit_2, self.boundary = dit_2, float(boundary)

    @property
    def experts(self) -> list[DiT]:
        return [self.dit, self.dit_2]

    def expert_guidance(self, s: GenerationSettings) -> list[float]:
        return [s.guidance, s.guidance if s.guidance_2 < 0 else s.guidance_2]

    def context_times(self, s: GenerationSettings) -> list[float]:
        return [s.context_noise, s.context_noise if s.context_noise_2 < 0 else s.context_noise_2]

    def switch(self, models: list):
        return switch_experts(*models, self.boundary)
