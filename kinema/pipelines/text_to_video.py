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
from kinema.flow.convention import add_noise
from kinema.flow.guidance import guided_velocity, with_given_frames
from kinema.flow.samplers import SAMPLERS, quantised_timesteps
from kinema.flow.schedule import diffusers_flow_times, sampling_times, wan_flow_times
from kinema.text.encoder import TextEncoder
from kinema.vae.model import VideoVAE
from kinema.video.image import fit_image, image_to_tensor
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
    guidance_2: float = -1.0      # two-expert models (Wan 2.2 A14B): the low-noise expert's scale (< 0: guidance)
    shift: float = 1.0            # timestep shift of the sampling grid
    sampler: str = "euler"        # a key of kinema.flow.samplers.SAMPLERS
    negative_prompt: str = ""     # the unconditional branch of CFG
    seed: int = 0
    schedule: str = "uniform"     # time grid: a key of SCHEDULES ("diffusers" / "wan": those UniPC grids, and the
                                  # network fed int(t * 1000) / 1000 as they feed it)
    refine: float = 0.0           # causal DiTs: > 0 streams the clip (latent frame by latent frame on a clean past),
                                  # re-noises it to the grid's first time <= refine and samples it whole from there;
                                  # 0: the clip is sampled whole from noise
    context_noise: float = 0.0    # causal streaming: the past each chunk attends to is noised to this time (its
                                  # tokens get it); for models trained with `kinema train --given-noise`; 0: clean
    context_noise_2: float = -1.0  # two-expert models: the low-noise expert's context noise (< 0: context_noise)
    continue_guidance: float = -1.0  # causal streaming: the guidance of the chunks after the model's own clip length,
                                     # which continue a past rather than set up the prompt's scene (guidance weakens
                                     # how closely they follow the past's motion); two-expert models: the high-noise
                                     # expert's; < 0: guidance
    continue_guidance_2: float = -1.0  # two-expert models: the low-noise expert's in those chunks (< 0: guidance_2)

    def to_dict(self) -> dict:
        return asdict(self)


SCHEDULES = ("uniform", "diffusers", "wan")
REFINE_SEED = 7_919  # the re-noising of --refine draws from seed + this (not the streamed clip's own noise)


def schedule_times(schedule: str, steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(times the sampler steps on, float64 grid the network's timesteps are quantised to, or None)."""
    if schedule == "uniform":
        return sampling_times(steps, shift), None
    grid_fn = {"diffusers": diffusers_flow_times, "wan": wan_flow_times}[schedule]
    return grid_fn(steps, shift, fp32=True), grid_fn(steps, shift)


def times_from(s: GenerationSettings, start: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The settings' time grid from its first time <= start on (all of it for start 1), and its quantisation grid."""
    times, grid = schedule_times(s.schedule, s.steps, s.shift)
    return times[int((times > start).sum()):], grid


def _attending(dit, slot):
    """`dit` attending to a KV cache: every call takes the slot `slot()` gives."""
    return lambda x, t, context: dit(x, t, context, kv=slot())


class TextToVideoPipeline:
    def __init__(self, text_encoder: TextEncoder, vae: VideoVAE, dit: DiT, defaults: GenerationSettings,
                 name: str = "custom", device: str | torch.device = "cpu"):
        self.text_encoder, self.vae, self.dit = text_encoder, vae, dit
        self.defaults, self.name, self.device = defaults, name, torch.device(device)
        self.source = name  # set by load_pipeline to the name or path it was loaded from

    # ---- the stages ---------------------------------------------------------------------------------------------
    def settings(self, **overrides) -> GenerationSettings:
        """The model's defaults with the given (non-None) overrides, validated."""
        s = replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        self.latent_shape(s)
        if s.steps < 1 or s.steps > 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {s.steps}")
        if s.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {s.sampler!r}; choose from {sorted(SAMPLERS)}")
        if s.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {s.schedule!r}; choose from {list(SCHEDULES)}")
        if not 0 < s.fps <= 240 or s.guidance < 0 or s.shift <= 0:
            raise ValueError("fps must be in (0, 240], guidance >= 0 and shift > 0")
        if not 0 <= s.refine < 1:
            raise ValueError(f"refine must be in [0, 1), got {s.refine}")
        if not 0 <= s.context_noise < 1 or not s.context_noise_2 < 1:
            raise ValueError(f"context noise must be a time in [0, 1), got {s.context_noise}, {s.context_noise_2}")
        if s.refine and self.dit.config.attention != "causal":
            raise ValueError("refine streams the clip first: it needs a causal model (attention='causal')")
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

    def initial_noise(self, s: GenerationSettings, seeds: list[int]) -> torch.Tensor:
        """Standard normal latents, sample i from a CPU generator seeded with seeds[i] (the same on every device)."""
        shape = self.latent_shape(s)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(sd)) for sd in seeds]
        return torch.stack(noise).to(self.device)

    @torch.no_grad()
    def encode_keyframes(self, s: GenerationSettings, batch: int, first=None, last=None):
        """Clean latents (B, C, T', H', W') and the (B, T') mask of given latent frames for a first and/or last image
        ((H, W, 3) uint8 arrays, fitted to the output size). The first image is encoded as frame 0 alone (the
        causal VAE's image latent); the last as a still 4-frame chunk, giving the last latent frame."""
        shape = self.latent_shape(s)
        clean = torch.zeros(batch, *shape, device=self.device)
        given = torch.zeros(batch, shape[1], dtype=torch.bool, device=self.device)
        if last is not None and shape[1] < 2:
            raise ValueError("a last image needs a video of at least 5 frames")
        for image, index in ((first, 0), (last, shape[1] - 1)):
            if image is None:
                continue
            x = image_to_tensor(fit_image(image, s.height, s.width)).to(self.device)
            frames = 1 if index == 0 else 5
            video = x[None, :, None].expand(1, 3, frames, s.height, s.width)  # (1, 3, F, H, W)
            clean[:, :, index] = self.vae.encode(video.to(next(self.vae.parameters()).dtype))[:, :, -1]
            given[:, index] = True
        return clean, given

    def denoise(self, noise, text, negative, s: GenerationSettings, callback=None, keyframes=None,
                kv_cache=None, start: float = 1.0) -> torch.Tensor:
        """Sample latents from noise; keyframes = (clean, given) holds some latent frames fixed.
        `kv_cache` (a causal model's `KVCache`s, one per expert): noise is the next chunk of a streamed video.
        `start` < 1: `noise` is a noisy sample at the grid's first time <= start, sampled from there."""
        dits = [self._dit_in(noise.dtype, dit) for dit in self.experts]
        if kv_cache is not None:
            dits = [_attending(dit, cache.next_slot) for dit, cache in zip(dits, kv_cache, strict=True)]
        models = self.guided_experts(dits, text, negative, s)
        if keyframes is not None and keyframes[1].any():
            clean, given = keyframes
            _, ph, pw = self.dit.config.patch_size
            tokens = (noise.shape[3] // ph) * (noise.shape[4] // pw)
            # inside the expert switch, which then picks the expert by the step's time, not the tokens' times
            models = [with_given_frames(model, clean, given, tokens) for model in models]
            noise = torch.where(given[:, None, :, None, None], clean, noise)
        return self.sample(self.switch(models), noise, s, callback, start)

    @staticmethod
    def sample(model, noise: torch.Tensor, s: GenerationSettings, callback=None, start: float = 1.0) -> torch.Tensor:
        """Run the settings' sampler on velocity function `model` from `noise`, on the settings' time grid (from its
        first time <= start)."""
        times, grid = times_from(s, start)
        if grid is not None:  # outermost, so that it sees the sampler's (B,) times
            model = quantised_timesteps(model, grid)
        return SAMPLERS[s.sampler](model, noise, times, callback)

    def stream_then_refine(self, prompts: list[str], seeds: list[int], image, text, negative,
                           s: GenerationSettings, callback=None, keyframes=None) -> torch.Tensor:
        """`--refine`: the clip streamed (each latent frame on the clean past before it, as `--stream` samples),
        re-noised to t0, the grid's first time <= s.refine (x_t0 = (1 - t0) x0 + t0 eps, fresh noise), and sampled
        whole from t0 down. Streaming places the motion (a causal model sampled whole may turn a bounce anywhere,
        docs/models/shapes.md), the whole pass the details."""
        from kinema.pipelines.stream import stream_latents

        streamed = torch.cat(list(stream_latents(self, prompts, seeds, image, **s.to_dict())), dim=2)
        t0 = times_from(s, s.refine)[0][0]
        noise = self.initial_noise(s, [seed + REFINE_SEED for seed in seeds])
        x = add_noise(streamed, noise, t0.expand(len(seeds)).to(noise))
        return self.denoise(x, text, negative, s, callback, keyframes, start=s.refine)

    @property
    def experts(self) -> list[DiT]:
        """The DiTs that denoise, the high-noise one first: one, except for two-expert models."""
        return [self.dit]

    def guided_experts(self, dits, text, negative, s: GenerationSettings) -> list:
        """Each expert's velocity function (`dits`: one callable per expert) under its classifier-free guidance."""
        return [guided_velocity(dit, text, negative, g) for dit, g in zip(dits, self.expert_guidance(s), strict=True)]

    def expert_guidance(self, s: GenerationSettings) -> list[float]:
        """Each expert's classifier-free guidance scale."""
        return [s.guidance]

    def continuation(self, s: GenerationSettings) -> GenerationSettings:
        """The settings of a stream's chunks after the model's own clip length: its continuation guidance."""
        g2 = s.guidance if s.guidance_2 < 0 else s.guidance_2
        return replace(s, guidance=s.guidance if s.continue_guidance < 0 else s.continue_guidance,
                       guidance_2=g2 if s.continue_guidance_2 < 0 else s.continue_guidance_2)

    def context_times(self, s: GenerationSettings) -> list[float]:
        """Each expert's time for the streamed past it attends to (`context_noise`; 0: clean)."""
        return [s.context_noise]

    def switch(self, models: list):
        """One velocity function from the experts' (two-expert pipelines switch at their boundary)."""
        (model,) = models
        return model

    def guided_model(self, dits, text, negative, s: GenerationSettings):
        """The velocity function the sampler steps, from one DiT callable per expert."""
        return self.switch(self.guided_experts(dits, text, negative, s))

    def _dit_in(self, dtype: torch.dtype, dit: DiT | None = None):
        """A DiT (default: the first), fed in its own dtype (bf16 weights) while the sampler's latents stay in
        `dtype`."""
        dit = self.dit if dit is None else dit
        own = next(dit.parameters()).dtype
        if own == dtype:
            return dit
        return lambda x, t, context, **kw: dit(x.to(own), t, context, **kw).to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(next(self.vae.parameters()).dtype)).float()

    # ---- LoRA adapters ------------------------------------------------------------------------------------------
    def load_lora(self, path, strength: float = 1.0, name: str | None = None) -> str:
        """Add a LoRA file (kinema, diffusers/peft or ComfyUI/musubi layout) to the DiT with this strength; several
        can be loaded. Returns the adapter's name (for `unload_lora`, or kinema.dit.lora.set_strength / merge_lora
        on `pipe.dit`)."""
        from kinema.dit.lora import load_lora

        return load_lora(self.dit, path, strength, name)

    def unload_lora(self, name: str | None = None) -> None:
        """Remove LoRA adapter `name` (default: all of them); the DiT is the original model again."""
        from kinema.dit.lora import remove_lora

        remove_lora(self.dit, name)

    # ---- the whole call -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], callback=None, seeds: list[int] | None = None, image=None,
                 last_image=None, save_latents: str | None = None, **overrides) -> list[Video]:
        """One video per prompt, as one batch; prompt i uses seeds[i] (default: seed + i).
        `image` / `last_image` ((H, W, 3) uint8) fix the first / last frame (image-to-video, keyframes).
        `save_latents`: a .safetensors path where the sampled latents are written before decoding.
        `overrides` are GenerationSettings fields."""
        s = self.settings(**overrides)
        seeds = list(seeds) if seeds is not None else [s.seed + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if s.refine and last_image is not None:
            raise ValueError("refine streams the clip first, so it cannot hold a last frame: use refine 0")
        timings, t0 = {}, time.perf_counter()
        text, neg = self.encode_prompts(prompts, s.negative_prompt)
        timings["text"], t0 = time.perf_counter() - t0, time.perf_counter()
        keyframes = self.encode_keyframes(s, len(prompts), image, last_image)
        if s.refine:
            latents = self.stream_then_refine(prompts, seeds, image, text, neg, s, callback, keyframes)
        else:
            latents = self.denoise(self.initial_noise(s, seeds), text, neg, s, callback, keyframes)
        timings["denoise"], t0 = time.perf_counter() - t0, time.perf_counter()
        if save_latents:  # before decoding: a decode that fails can be retried with `kinema decode`
            from kinema.pipelines.latents import save_latents as _save

            _save(save_latents, latents, {"prompts": prompts, "seeds": seeds, "model": self.source, **s.to_dict()})
        video = self.decode(latents)
        timings["decode"] = time.perf_counter() - t0
        log.info("timings %s", {k: round(v, 3) for k, v in timings.items()})
        meta = {**s.to_dict(), "model": self.name}
        return [Video.from_tensor(v, s.fps, {**meta, "prompt": p, "seed": sd}) for v, p, sd in zip(video, prompts, seeds)]

    def __call__(self, prompt: str, callback=None, **overrides) -> Video:
        return self.generate([prompt], callback, **overrides)[0]
