"""Causal video VAE (the Wan-VAE design): 8x spatial and 4x temporal compression, first frame encoded alone.

One class, configured by `VAEConfig`. The Wan 2.1 VAE is the config with full 3D convolutions and no input
patchify. The Wan 2.2 VAE (`kinema.convert.wan22.wan22_vae_config`) patchifies 2x2 pixels first (16x spatial),
adds parameter-free shortcuts around each stage (`residual`, with frame 0 zero-padded, none around the decoder's
last stage), and has a wider decoder whose upsamples keep the channels. The embedded `shapes` VAE patchifies too
and uses factorised (2+1)D convolutions, so that it trains on a CPU, and its decoder ends with a refine head at twice
the last stage's resolution (`refine_dim`) for sharper object edges.

Frames: a video of 1 + 4k frames maps to 1 + k latent frames. Latent frame 0 sees only frame 0 (so an image is a
1-frame video); latent frame i sees frames up to 4i. Encoding runs chunk by chunk (frame 0, then 4 frames at a
time) and decoding one latent frame at a time, with a `CausalCache`; the whole-clip path is the same code with two
chunks ([0], [1:]), so chunked and whole agree exactly.

Latents returned by `encode` are normalised with the per-channel statistics in the config:
z_norm = (z - latents_mean) / latents_std; `decode` takes normalised latents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kinema.vae.causal import CausalCache, CausalConv3d, RMSNorm, conv3x3


@dataclass(frozen=True)
class VAEConfig:
    z_dim: int = 16                                    # latent channels (Wan 2.1: 16, Wan 2.2: 48)
    base_dim: int = 96                                 # channels of the first stage (Wan 2.1: 96)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)           # channel multiplier per stage; a 2x downsample between stages
    num_res_blocks: int = 2                            # residual blocks per encoder stage (decoder: one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # which downsamples also halve time
    spatial_downsample: tuple[bool, ...] = (True, True, True)    # which downsamples halve H and W (Wan: all)
    attn_mid: bool = True                              # per-frame self-attention in the middle blocks
    patch_size: int = 1                                # space-to-depth before the encoder (Wan 2.2: 2)
    conv: str = "3d"                                   # "3d" (Wan) or "2+1d" (factorised, CPU-cheap)
    residual: bool = False                             # parameter-free shortcuts around each stage (Wan 2.2 idea)
    residual_pad: str = "repeat"                       # encoder shortcuts pair frame 0 (it comes alone) with a copy
                                                       # of itself ("repeat") or a zero frame before it ("zero": Wan 2.2)
    residual_last: bool = True                         # a shortcut around the decoder's last (non-upsampling) stage
                                                       # too (Wan 2.2: none)
    decoder_base_dim: int = 0                          # decoder width of the first stage (0: base_dim; Wan 2.2: 256)
    decoder_halves: bool = True                        # decoder upsample convs halve the channels (Wan 2.1); Wan 2.2
                                                       # keeps them, so each stage takes its full width
    refine_dim: int = 0                                # >0: a decoder head this wide at 2x the resolution of the
                                                       # last stage adds a finer correction (output patch_size / 2:
                                                       # sharp edges for the patchified shapes VAE); 0: none (Wan)
    latents_mean: tuple[float, ...] = (0.0,) * 16      # per-channel statistics for latent normalisation
    latents_std: tuple[float, ...] = (1.0,) * 16

    def __post_init__(self):
        n = len(self.dim_mult) - 1
        if len(self.temporal_downsample) != n or len(self.spatial_downsample) != n:
            raise ValueError("temporal_downsample/spatial_downsample need one entry per downsample (len(dim_mult) - 1)")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError("latents_mean/latents_std need one value per latent channel")
        if self.refine_dim and self.patch_size % 2:
            raise ValueError(f"refine_dim needs an even patch_size, got {self.patch_size}")
        if self.residual_pad not in ("repeat", "zero"):
            raise ValueError(f"residual_pad must be 'repeat' or 'zero', got {self.residual_pad!r}")

    @property
    def spatial_compression(self) -> int:
        return self.patch_size * 2 ** sum(self.spatial_downsample)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        tuples = ("dim_mult", "temporal_downsample", "spatial_downsample", "latents_mean", "latents_std")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, conv: str):
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = conv3x3(in_dim, out_dim, conv)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = conv3x3(out_dim, out_dim, conv)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(F.silu(self.norm2(x)), cache)
        return x + skip


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (causal by construction)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, _, t, h, w = x.shape
        y = rearrange(x, "b c t h w -> (b t) c h w")
        q, k, v = rearrange(self.to_qkv(self.norm(y)), "n (k c) h w -> k n 1 (h w) c", k=3)
        y = F.scaled_dot_product_attention(q, k, v)                # (B*T, 1, H*W, C)
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=h, w=w))
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=b, t=t)


class Downsample(nn.Module):
    """2x spatial downsample per frame; with `temporal`, then a stride-2 causal time conv (frame 0 kept alone).

    `spatial=False` keeps H and W (a per-frame stride-1 conv), for time-only stages."""

    def __init__(self, dim: int, temporal: bool, spatial: bool = True):
        super().__init__()
        self.resample = (nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2)) if spatial
                         else nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim, 3, padding=1)))
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        t = x.shape[2]
        x = rearrange(self.resample(rearrange(x, "b c t h w -> (b t) c h w")), "(b t) c h w -> b c t h w", t=t)
        if self.time_conv is None:
            return x
        if not cache.seen(self):  # the first chunk is frame 0 alone: it passes through
            cache.put(self, x[:, :, -1:].detach())
            return x
        past = cache.get(self)
        cache.put(self, x[:, :, -1:].detach())
        return self.time_conv(torch.cat([past, x], dim=2))  # windows (0,1,2), (2,3,4), ...: 2n frames -> n


class _NearestUpsample2x(nn.Upsample):
    """2x nearest-exact upsampling computed in fp32 (as Wan does), cast back."""

    def __init__(self):
        super().__init__(scale_factor=(2.0, 2.0), mode="nearest-exact")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class Upsample(nn.Module):
    """With `temporal`, a causal time conv doubles the frames (not for latent frame 0); then 2x nearest + conv
    (to `out_dim` channels, default dim / 2)."""

    def __init__(self, dim: int, temporal: bool, spatial: bool = True, out_dim: int | None = None):
        super().__init__()
        self.resample = nn.Sequential(_NearestUpsample2x() if spatial else nn.Identity(),
                                      nn.Conv2d(dim, out_dim or dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.time_conv is not None:
            x = self._double_frames(x, cache)
        t = x.shape[2]
        y = self.resample(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=t)

    def _double_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if not cache.seen(self):  # latent frame 0 gives one frame; the time conv starts at latent frame 1
            cache.put(self, None)
            return x
        y = self.time_conv(x, cache)  # its own past starts as zero padding at latent frame 1
        return rearrange(y, "b (two c) t h w -> b c (t two) h w", two=2)  # (B, C, 2T, H, W)


class AvgDown(nn.Module):
    """Parameter-free stage shortcut of the encoder: space/time-to-channel, then average channel groups.

    Frames are paired as the Downsample time conv pairs them: frame 0 alone, then (1, 2), (3, 4), ... Frame 0 is
    paired with itself (`pad="repeat"`) or with a zero frame before it (`pad="zero"`, Wan 2.2's AvgDown3D).
    """

    def __init__(self, in_dim: int, out_dim: int, t: int, s: int, pad: str = "repeat"):
        super().__init__()
        assert (in_dim * t * s * s) % out_dim == 0
        self.out_dim, self.t, self.s, self.pad = out_dim, t, s, pad

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.t == 2 and not cache.seen(self):  # the first chunk is frame 0 alone
            cache.put(self, None)
            x = x.repeat_interleave(2, dim=2) if self.pad == "repeat" else torch.cat([torch.zeros_like(x), x], 2)
        x = rearrange(x, "b c (t pt) (h ps) (w qs) -> b (c pt ps qs) t h w", pt=self.t, ps=self.s, qs=self.s)
        return x.unflatten(1, (self.out_dim, -1)).mean(2)


class DupUp(nn.Module):
    """Parameter-free stage shortcut of the decoder: duplicate channels, then channel-to-space/time.

    The first latent frame gives one frame (its duplicate in time is dropped), as the Upsample time conv does.
    """

    def __init__(self, in_dim: int, out_dim: int, t: int, s: int):
        super().__init__()
        assert (out_dim * t * s * s) % in_dim == 0
        self.repeats, self.t, self.s = out_dim * t * s * s // in_dim, t, s

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = x.repeat_interleave(self.repeats, dim=1)
        x = rearrange(x, "b (c pt ps qs) t h w -> b c (t pt) (h ps) (w qs)", pt=self.t, ps=self.s, qs=self.s)
        if self.t == 2 and not cache.seen(self):
            cache.put(self, None)
            x = x[:, :, 1:]
        return x


class MidBlock(nn.Module):
    def __init__(self, dim: int, conv: str, attn: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim, conv), ResidualBlock(dim, dim, conv)])
        self.attentions = nn.ModuleList([FrameAttention(dim)] if attn else [])

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x, cache)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = conv3x3(3 * cfg.patch_size**2, dims[0], cfg.conv)
        blocks: list[nn.Module] = []
        shortcuts, self.stages = [], []  # stage k runs down_blocks[a:b] for (a, b) = stages[k]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            start, stage_in = len(blocks), d_in
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(d_in, d_out, cfg.conv))
                d_in = d_out
            t = s = 1
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Downsample(d_out, cfg.temporal_downsample[i], cfg.spatial_downsample[i]))
                t, s = 1 + cfg.temporal_downsample[i], 1 + cfg.spatial_downsample[i]
            self.stages.append((start, len(blocks)))
            if cfg.residual:
                shortcuts.append(AvgDown(stage_in, d_out, t, s, cfg.residual_pad))
        self.down_blocks = nn.ModuleList(blocks)
        self.shortcuts = nn.ModuleList(shortcuts)  # no parameters
        self.mid_block = MidBlock(dims[-1], cfg.conv, cfg.attn_mid)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = conv3x3(dims[-1], 2 * cfg.z_dim, cfg.conv)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for k, (a, b) in enumerate(self.stages):
            skip = self.shortcuts[k](x, cache) if self.shortcuts else None
            for block in self.down_blocks[a:b]:
                x = block(x, cache)
            x = x if skip is None else x + skip
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class UpBlock(nn.Module):
    """Residual blocks, then an optional upsample to `up_dim` channels; `residual`: plus a DupUp shortcut."""

    def __init__(self, d_in: int, d_out: int, blocks: int, upsample: tuple[bool, bool] | None, conv: str,
                 residual: bool = False, up_dim: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResidualBlock(d_in if i == 0 else d_out, d_out, conv) for i in range(blocks)])
        up_dim = up_dim or d_out // 2
        self.upsamplers = nn.ModuleList(
            [Upsample(d_out, *upsample, out_dim=up_dim)] if upsample else [])  # upsample = (temporal, spatial)
        t, s = (1 + upsample[0], 1 + upsample[1]) if upsample else (1, 1)
        self.shortcut = DupUp(d_in, up_dim if upsample else d_out, t, s) if residual else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        skip = self.shortcut(x, cache) if self.shortcut is not None else None
        for block in (*self.resnets, *self.upsamplers):
            x = block(x, cache)
        return x if skip is None else x + skip


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [(cfg.decoder_base_dim or cfg.base_dim) * m for m in (mult[-1], *mult[::-1])]
        temporal_up, spatial_up = cfg.temporal_downsample[::-1], cfg.spatial_downsample[::-1]
        self.conv_in = conv3x3(cfg.z_dim, dims[0], cfg.conv)
        self.mid_block = MidBlock(dims[0], cfg.conv, cfg.attn_mid)
        blocks = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if cfg.decoder_halves and i > 0:
                d_in //= 2  # the previous upsample halved the channels
            last = i == len(mult) - 1
            up = None if last else (temporal_up[i], spatial_up[i])
            blocks.append(UpBlock(d_in, d_out, cfg.num_res_blocks + 1, up, cfg.conv,
                                  cfg.residual and (cfg.residual_last or not last),
                                  d_out // 2 if cfg.decoder_halves else d_out))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = conv3x3(dims[-1], 3 * cfg.patch_size**2, cfg.conv)
        self.refine = RefineHead(dims[-1], cfg.refine_dim, cfg.patch_size // 2, cfg.conv) if cfg.refine_dim else None
        self.patch_size = cfg.patch_size

    def forward(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Latents (B, z, T', h, w) -> video (B, 3, T, H, W), unclamped."""
        x = self.mid_block(self.conv_in(z, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        video = unpatchify(self.conv_out(F.silu(self.norm_out(x)), cache), self.patch_size)
        return video if self.refine is None else video + self.refine(x, cache)


def unpatchify(y: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3 p^2, T, h, w) -> (B, 3, T, h p, w p): the inverse of the encoder's space-to-depth."""
    return rearrange(y, "b (c r q) t h w -> b c t (h q) (w r)", q=p, r=p)


class RefineHead(nn.Module):
    """A last decoder stage at twice the resolution: 2x upsample, a residual block, and an output conv that starts
    at zero (so a trained decoder keeps its output when the head is added) -> a correction of the video whose pixels
    come in patches of `patch` (half the VAE's)."""

    def __init__(self, in_dim: int, dim: int, patch: int, conv: str):
        super().__init__()
        self.up = Upsample(in_dim, temporal=False, out_dim=dim)
        self.block = ResidualBlock(dim, dim, conv)
        self.norm_out = RMSNorm(dim)
        self.conv_out = CausalConv3d(dim, 3 * patch**2, (1, 3, 3), padding=(0, 1, 1))  # per frame
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.patch = patch

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.block(self.up(x, cache), cache)                      # (B, dim, T, 2h, 2w)
        return unpatchify(self.conv_out(F.silu(self.norm_out(x)), cache), self.patch)  # (B, 3, T, 2h p, 2w p)


def _chunks(n: int, first: int, size: int | None):
    """[0, first), then pieces of `size` (or everything that is left when size is None)."""
    yield slice(0, min(first, n))
    step = size or max(n - first, 1)
    for start in range(first, n, step):
        yield slice(start, min(start + step, n))


class VideoVAE(nn.Module):
    """Causal video autoencoder; `encode`/`decode` speak normalised latents and videos in [-1, 1]."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)
        stats = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1, 1)  # noqa: E731
        self.register_buffer("latents_mean", stats(config.latents_mean), persistent=False)
        self.register_buffer("latents_std", stats(config.latents_std), persistent=False)

    # ---- shapes -------------------------------------------------------------------------------------------------
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latents of a video; raises ValueError for sizes the VAE cannot take."""
        tc, sc = self.config.temporal_compression, self.config.spatial_compression
        if frames < 1 or (frames - 1) % tc:
            raise ValueError(f"frame count must be 1 + {tc}k (1, {1 + tc}, {1 + 2 * tc}, ...), got {frames}")
        if height % sc or width % sc or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {sc}, got {height}x{width}")
        return self.config.z_dim, 1 + (frames - 1) // tc, height // sc, width // sc

    # ---- encode -------------------------------------------------------------------------------------------------
    def encode_moments(self, video: torch.Tensor, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, T, H, W) in [-1, 1] -> raw posterior mean and log-variance, each (B, z, T', H', W')."""
        self.latent_shape(*video.shape[2:])
        p = self.config.patch_size
        x = rearrange(video, "b c t (h q) (w r) -> b (c r q) t h w", q=p, r=p)
        cache, outs = CausalCache(), []
        for s in _chunks(x.shape[2], 1, self.config.temporal_compression if chunked else None):
            outs.append(self.quant_conv(self.encoder(x[:, :, s], cache)))
        mean, logvar = torch.cat(outs, dim=2).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latents_mean.to(z)) / self.latents_std.to(z)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latents_std.to(z) + self.latents_mean.to(z)

    def encode(self, video: torch.Tensor, chunked: bool = True, generator: torch.Generator | None = None,
               sample: bool = False) -> torch.Tensor:
        """video (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, z, T', H', W') (the mode, unless `sample`)."""
        mean, logvar = self.encode_moments(video, chunked)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise
        return self.normalise(mean)

    # ---- decode -------------------------------------------------------------------------------------------------
    def decode_raw(self, z: torch.Tensor, chunked: bool = True) -> torch.Tensor:
        """Raw (unnormalised) latents (B, z, T', H', W') -> video (B, 3, 1 + 4(T'-1), H, W), unclamped."""
        cache, outs = CausalCache(), []
        z = self.post_quant_conv(z)
        for s in _chunks(z.shape[2], 1, 1 if chunked else None):
            outs.append(self.decoder(z[:, :, s], cache))
        return torch.cat(outs, dim=2)

    def decode(self, z: torch.Tensor, chunked: bool = True) -> torch.Tensor:
        """Normalised latents -> video (B, 3, T, H, W) in [-1, 1]."""
        return self.decode_raw(self.denormalise(z), chunked).clamp(-1.0, 1.0)

    def decode_next(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Streaming decode: normalised latents of the next latent frames of a video whose earlier latent frames
        went through `cache` (a fresh one for the first) -> their video frames (B, 3, n, H, W) in [-1, 1].
        The pieces, concatenated, equal `decode` of the whole."""
        z = self.post_quant_conv(self.denormalise(z))
        return torch.cat([self.decoder(z[:, :, i:i + 1], cache) for i in range(z.shape[2])], dim=2).clamp(-1.0, 1.0)
