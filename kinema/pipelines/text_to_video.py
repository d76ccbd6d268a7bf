"""Text-to-video: prompt -> text embeddings -> seeded noise -> flow-matching sampling -> VAE decode -> Video.

    pipe = kinema.load_pipeline("shapes")
    video = pipe("a red circle moving right on a black background", seed=0)
    video.save("out.mp4")

Each stage is its own method, so benchmarks and other pipelines (image-to-video, streaming) reuse them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

import torch

from kinema.dit.model import DiT
from kinema.flow.guidance import guided_velocity
from kinema.flow.samplers import SAMPLERS
from kinema.flow.schedule import sampling_times
from kinema.text.encoder import TextEncoder
from kinema.vae.model import VideoVAE
from kinema.video.io import Video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    frames: int = 17              # 1 + 4k
    height: int = 64              # multiple of the VAE's spatial compression x the DiT patch
    width: int = 64
    fps: float = 8.0
    steps: int = 20               # sampling steps
    guidance: float = 5.0         # classifier-free guidance scale (1 = off)
    shift: float = 1.0            # timestep shift of the sampling grid
    sampler: str = "euler"        # a key of kinema.flow.samplers.SAMPLERS
    negative_prompt: str = ""     # the unconditional branch of CFG
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TextToVideoPipeline:
    def __init__(self, text_encoder: TextEncoder, vae: VideoVAE, dit: DiT, defaults: GenerationSettings,
                 name: str = "custom", device: str | torch.device = "cpu"):
        self.text_encoder, self.vae, self.dit = text_encoder, vae, dit
        self.defaults, self.name, self.device = defaults, name, torch.device(device)

    # ---- the stages ---------------------------------------------------------------------------------------------
    def settings(self, **overrides) -> GenerationSettings:
        """The model's defaults with the given (non-None) overrides, validated."""
        s = replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        self.latent_shape(s)
        if s.steps < 1 or s.steps > 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {s.steps}")
        if s.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {s.sampler!r}; choose from {sorted(SAMPLERS)}")
        if not 0 < s.fps <= 240 or s.guidance < 0 or s.shift <= 0:
            raise ValueError("fps must be in (0, 240], guidance >= 0 and shift > 0")
        return s

    def latent_shape(self, s: GenerationSettings) -> tuple[int, int, int, int]:
        c, t, h, w = self.vae.latent_shape(s.frames, s.height, s.width)
        _, ph, pw = self.dit.config.patch_size
        if h % ph or w % pw:
            unit = self.vae.config.spatial_compression * ph
            raise ValueError(f"height and width must be multiples of {unit}, got {s.height}x{s.width}")
        return c, t, h, w

    def encode_prompts(self, prompts: list[str], negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) text embeddings for the prompts and for the negative prompt (repeated)."""
        for p in prompts:
            if not p.strip():
                raise ValueError("the prompt is empty")
        text = self.text_encoder(prompts).to(self.device)
        neg = self.text_encoder([negative]).to(self.device).expand(len(prompts), -1, -1)
        return text, neg

    def initial_noise(self, s: GenerationSettings, batch: int) -> torch.Tensor:
        """Standard normal latents from a CPU generator seeded with s.seed (identical on every device)."""
        g = torch.Generator("cpu").manual_seed(s.seed)
        return torch.randn((batch, *self.latent_shape(s)), generator=g, dtype=torch.float32).to(self.device)

    def denoise(self, noise, text, negative, s: GenerationSettings, callback=None) -> torch.Tensor:
        model = guided_velocity(self.dit, text, negative, s.guidance)
        times = sampling_times(s.steps, s.shift)
        return SAMPLERS[s.sampler](model, noise, times, callback)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents)

    # ---- the whole call -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], callback=None, **overrides) -> list[Video]:
        """One video per prompt (a batch); `overrides` are GenerationSettings fields."""
        s = self.settings(**overrides)
        timings, t0 = {}, time.perf_counter()
        text, neg = self.encode_prompts(prompts, s.negative_prompt)
        timings["text"], t0 = time.perf_counter() - t0, time.perf_counter()
        latents = self.denoise(self.initial_noise(s, len(prompts)), text, neg, s, callback)
        timings["denoise"], t0 = time.perf_counter() - t0, time.perf_counter()
        video = self.decode(latents)
        timings["decode"] = time.perf_counter() - t0
        log.info("timings %s", {k: round(v, 3) for k, v in timings.items()})
        meta = {**s.to_dict(), "model": self.name}
        return [Video.from_tensor(v, s.fps, {**meta, "prompt": p}) for v, p in zip(video, prompts)]

    def __call__(self, prompt: str, callback=None, **overrides) -> Video:
        return self.generate([prompt], callback, **overrides)[0]
