"""Diffusion transformer (the Wan DiT design): one class, the tiny default and the Wan sizes are configs.

    latents (B, C, F, H, W) --3D patch embed--> tokens (B, L, D), L = F * H/2 * W/2
    t (B,) or per-token (B, L) --sinusoid + MLP--> temb, and 6 modulation vectors per block
    text (B, Lt, text_dim) --MLP--> context (B, Lt, D)
    image (B, Li, image_dim) CLIP tokens (Wan2.1 I2V/FLF2V only) --LN, MLP, LN--> image context (B, Li, D)
    N x block: adaLN-modulated self-attention (QK RMS-norm, 3D RoPE) -> cross-attention to the text (and, beside
               it with the same queries, to the image tokens; the two outputs are summed before one out-projection)
               -> FFN, gated
    head: adaLN from temb -> linear -> unpatchify -> velocity (B, C_out, F, H, W)

Self-attention has three modes (`DiTConfig.attention`), all through scaled_dot_product_attention:
    full        every token attends to every token (Wan)
    factorised  spatial attention within each latent frame, then temporal attention across latent frames at each
                position (a second attention module, optionally with a depthwise temporal conv beside it)
    causal      block-causal: tokens of latent frame i attend to frames <= i; streams with a KV cache (`cache.py`)

Parameter names follow the original Wan release, so its checkpoints load without renaming;
`kinema.convert` maps diffusers' names onto these.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kinema.dit.cache import KVSlot
from kinema.dit.linear import Linear
from kinema.dit.rope import apply_rope, axis_dims, rope_table

ATTENTION_MODES = ("full", "factorised", "causal")


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 16                   # latent channels in (Wan2.2 TI2V: 48)
    out_channels: int = 16                  # velocity channels out
    dim: int = 1536                         # hidden size D = num_heads * head_dim
    num_heads: int = 12                     # attention heads (Wan: head_dim 128)
    num_layers: int = 30                    # transformer blocks
    ffn_dim: int = 8960                     # FFN hidden size
    text_dim: int = 4096                    # width of the text encoder's token states (umT5-xxl: 4096)
    freq_dim: int = 256                     # sinusoidal timestep embedding width
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the 3D patch embedding
    cross_attn_norm: bool = True            # affine LayerNorm before cross-attention (Wan: on)
    eps: float = 1e-6                       # LayerNorm / RMSNorm epsilon
    attention: str = "full"                 # self-attention: "full" (Wan), "factorised" or "causal" (see above)
    temporal_conv: bool = False             # factorised only: depthwise temporal conv (kernel 3) beside temporal attn
    image_dim: int | None = None            # CLIP token width of Wan2.1 I2V/FLF2V (1280); None: no image branch
    image_pos_len: int | None = None        # FLF2V: learned positions added to both images' tokens (514 = 2 x 257);
                                            # None: none (I2V)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or min(axis_dims(self.head_dim)) <= 0:
            raise ValueError(f"head_dim {self.head_dim} too small or odd for 3D RoPE")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.temporal_conv and self.attention != "factorised":
            raise ValueError("temporal_conv is part of the factorised attention mode")
        if self.image_pos_len is not None and self.image_dim is None:
            raise ValueError("image_pos_len (FLF2V) needs the image branch (image_dim)")

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("image_dim", "image_pos_len"):  # model.json files of models without an image branch stay as
            if d[key] is None:                      # they were
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        return cls(**{k: tuple(v) if k == "patch_size" else v for k, v in d.items()})


def collapse_padding(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Trailing all-zero text rows (Wan zero-pads every prompt to 512) folded into one, for cross-attention.

    Equal rows give equal keys and values, and softmax attention over n equal keys equals attention over one of them
    with log(n) added to its logit. So context (B, Lt, Dt) whose rows m.. are zero in every sample becomes
    (B, m + 1, Dt) and an additive logit bias (1, m + 1) that is log(Lt - m) on the kept zero row: the same output,
    computed over m + 1 keys instead of Lt. Only in fp32/fp64, where log(n) is held exactly enough; in half precision
    (and when nothing is gained) it returns the context as it is and no bias."""
    if context.dtype not in (torch.float32, torch.float64) or context.shape[1] < 3:
        return context, None
    real = context.ne(0).any(-1).any(0)                                          # (Lt,) row is real in any sample
    m = int(torch.nonzero(real).max()) + 1 if bool(real.any()) else 0           # rows m.. are padding
    pads = context.shape[1] - m
    if pads < 2:
        return context, None
    bias = torch.zeros(1, m + 1, dtype=context.dtype, device=context.device)   # (1, Lt'): broadcasts over queries
    bias[0, m] = math.log(pads)
    return context[:, : m + 1], bias


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoid [cos | sin] of t (any shape) with frequencies exp(-ln(1e4) i / (dim/2)), fp32 -> (*t.shape, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 (Wan's q/k norm, over all heads)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).type_as(x) * self.weight  # one fused pass


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (Wan keeps norms in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class Attention(nn.Module):
    """Multi-head attention with q/k RMS-norm across heads; RoPE when tables are given (self-attention)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def project(self, x: torch.Tensor, context: torch.Tensor, rope=None):
        """q (B, nh, L, hd) from x; k, v (B, nh, Lc, hd) from the context; RoPE on q and k when given."""
        heads = lambda y: rearrange(y, "b l (n d) -> b n l d", n=self.num_heads)  # noqa: E731
        q, k = self.norm_q(self.q(x)), self.norm_k(self.k(context))                  # (B, L | Lc, D)
        if rope is not None:
            q, k = apply_rope(q, rope, self.num_heads), apply_rope(k, rope, self.num_heads)
        return heads(q), heads(k), heads(self.v(context))

    def attend(self, q, k, v, mask=None) -> torch.Tensor:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, L, hd)
        return self.o(rearrange(y, "b n l d -> b l (n d)"))

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope=None, mask=None) -> torch.Tensor:
        return self.attend(*self.project(x, context, rope), mask)


class ImageCrossAttention(Attention):
    """Wan2.1 I2V cross-attention: the text attention, plus an attention of the same queries to the image tokens
    through their own key/value projections and key norm (`k_img`, `v_img`, `norm_k_img`); the two results are
    summed before the one output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__(dim, num_heads, eps)
        self.k_img, self.v_img = Linear(dim, dim), Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, image: torch.Tensor, mask=None) -> torch.Tensor:
        """x (B, L, D) queries; context (B, Lt, D) text, `mask` its logit bias; image (B, Li, D) projected tokens."""
        heads = lambda y: rearrange(y, "b l (n d) -> b n l d", n=self.num_heads)  # noqa: E731
        q, k, v = self.project(x, context)                                          # (B, nh, L | Lt, hd)
        k_img, v_img = heads(self.norm_k_img(self.k_img(image))), heads(self.v_img(image))  # (B, nh, Li, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) + F.scaled_dot_product_attention(q, k_img, v_img)
        return self.o(rearrange(y, "b n l d -> b l (n d)"))


class ImageEmbedding(nn.Module):
    """Wan's `img_emb` (MLPProj): CLIP tokens (B, Li, image_dim) -> LayerNorm, Linear, GELU (exact), Linear,
    LayerNorm (eps 1e-5) -> (B, Li, D). FLF2V first adds learned positions `emb_pos` (1, Li, image_dim) to the
    tokens of both images (the first image's, then the last's)."""

    def __init__(self, image_dim: int, dim: int, pos_len: int | None = None):
        super().__init__()
        self.proj = nn.Sequential(LayerNorm(image_dim, eps=1e-5), Linear(image_dim, image_dim), nn.GELU(),
                                  Linear(image_dim, dim), LayerNorm(dim, eps=1e-5))
        self.emb_pos = nn.Parameter(torch.zeros(1, pos_len, image_dim)) if pos_len is not None else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.emb_pos is not None:
            if image.shape[1] != self.emb_pos.shape[1]:
                raise ValueError(f"this DiT (FLF2V) takes {self.emb_pos.shape[1]} image tokens (first and last "
                                 f"image), got {image.shape[1]}")
            image = image + self.emb_pos
        return self.proj(image)


@dataclass
class TokenGrid:
    """Where the tokens of one forward pass sit: the post-patch grid (F, H, W), frame-major, and its RoPE tables."""
    grid: tuple[int, int, int]
    rope: torch.Tensor                        # rotation table, complex (L, head_dim / 2)
    kv: KVSlot | None = None                  # causal streaming: the past chunks' keys and values
    text_bias: torch.Tensor | None = None     # (1, Lt) cross-attention logit bias of folded text padding
    image: torch.Tensor | None = None         # (B, Li, D) projected CLIP tokens (Wan2.1 I2V/FLF2V), attended beside
                                              # the text

    @property
    def per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    def frame_rope(self):
        """Tables of one frame's positions (spatial attention: the time angle is the same for all its tokens)."""
        return self.rope[: self.per_frame]

    def time_rope(self):
        """Tables of the positions (f, 0, 0) (temporal attention: the space angles cancel along a time line)."""
        return self.rope[:: self.per_frame]

    def causal_mask(self, past_frames: int, device) -> torch.Tensor:
        """(L, L_past + L) bool: a token of frame i may see the past frames and the frames <= i of this pass."""
        q = torch.arange(self.grid[0], device=device).repeat_interleave(self.per_frame)
        k = torch.arange(-past_frames, self.grid[0], device=device).repeat_interleave(self.per_frame)
        return k[None, :] <= q[:, None]


class Block(nn.Module):
    """Wan block: modulated self-attn, unmodulated cross-attn, modulated FFN; gated residuals.

    In the factorised mode the self-attention sees one frame, and a second, temporal attention (sharing the
    self-attention's modulation) follows it."""

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        d, self.index, self.mode = cfg.dim, index, cfg.attention
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.eps)
        if cfg.attention == "factorised":
            self.temporal_attn = Attention(d, cfg.num_heads, cfg.eps)
            self.temporal_conv = nn.Conv1d(d, d, 3, padding=1, groups=d) if cfg.temporal_conv else None
        self.norm3 = LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.image_branch = cfg.image_dim is not None
        self.cross_attn = (ImageCrossAttention if self.image_branch else Attention)(d, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, e0, context, tokens: TokenGrid):
        # e0: (B, Lt, 6, D) with Lt = 1 (one timestep per sample) or L (per-token timesteps)
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.unsqueeze(0) + e0.float()).unbind(2)
        # fp32 modulation and gated residuals, each one fused multiply-add (addcmul: a + b * c)
        modulated = lambda y: torch.addcmul(shift, self.norm1(y).float(), 1 + scale).type_as(y)  # noqa: E731
        gated = lambda y, out, g: torch.addcmul(y.float(), out.float(), g).type_as(y)  # noqa: E731
        x = gated(x, self.self_attention(modulated(x), tokens), gate)
        if self.mode == "factorised":
            x = gated(x, self.temporal_attention(modulated(x), tokens), gate)
        x = x + self.cross_attention(self.norm3(x), context, tokens)
        h = torch.addcmul(c_shift, self.norm2(x).float(), 1 + c_scale).type_as(x)
        return gated(x, self.ffn(h), c_gate)

    def cross_attention(self, h: torch.Tensor, context: torch.Tensor, tokens: TokenGrid) -> torch.Tensor:
        """Attention to the text (its folded padding biased), and for Wan2.1 I2V beside it to the image tokens."""
        if self.image_branch:
            return self.cross_attn(h, context, tokens.image, tokens.text_bias)
        return self.cross_attn(h, context, mask=tokens.text_bias)

    def self_attention(self, h: torch.Tensor, tokens: TokenGrid) -> torch.Tensor:
        if self.mode == "full":
            return self.self_attn(h, h, tokens.rope)
        if self.mode == "factorised":  # within each frame
            frames = rearrange(h, "b (f s) d -> (b f) s d", f=tokens.grid[0])
            out = self.self_attn(frames, frames, tokens.frame_rope())
            return rearrange(out, "(b f) s d -> b (f s) d", f=tokens.grid[0])
        q, k, v = self.self_attn.project(h, h, tokens.rope)  # causal
        past = tokens.kv.past(self.index) if tokens.kv is not None else None
        if tokens.kv is not None:
            tokens.kv.add(self.index, k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, L_past + L, hd)
        past_frames = (k.shape[2] - q.shape[2]) // tokens.per_frame
        return self.self_attn.attend(q, k, v, tokens.causal_mask(past_frames, h.device))

    def temporal_attention(self, h: torch.Tensor, tokens: TokenGrid) -> torch.Tensor:
        """Attention along time at each spatial position (+ the temporal conv), back in frame-major order."""
        lines = rearrange(h, "b (f s) d -> (b s) f d", f=tokens.grid[0])                 # (B*S, F, D)
        out = self.temporal_attn(lines, lines, tokens.time_rope())
        if self.temporal_conv is not None:
            out = out + self.temporal_conv(lines.transpose(1, 2)).transpose(1, 2)
        return rearrange(out, "(b s) f d -> b (f s) d", s=tokens.per_frame)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # temb: (B, Lt, D); the head is modulated by temb itself, not by the 6D projection
        shift, scale = (self.modulation.unsqueeze(0) + temb.float().unsqueeze(2)).unbind(2)
        return self.head((self.norm(x).float() * (1 + scale) + shift).type_as(x))


class DiT(nn.Module):
    """Predicts the flow-matching velocity v = noise - x0 from noisy latents, time and text tokens."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), Linear(d, d))
        self.time_embedding = nn.Sequential(Linear(cfg.freq_dim, d), nn.SiLU(), Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(d, 6 * d))
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.img_emb = ImageEmbedding(cfg.image_dim, d, cfg.image_pos_len) if cfg.image_dim is not None else None
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's init: xavier linears with zero bias, normal(0.02) embeddings, a zero output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for block in self.blocks:
            if getattr(block, "temporal_conv", None) is not None:
                nn.init.zeros_(block.temporal_conv.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, kv: KVSlot | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, F, H, W) noisy latents; t (B,) or per-token (B, L) timesteps in [0, 1000]
        (= sigma * 1000); context (B, Lt, text_dim) -> velocity (B, C_out, F, H, W).
        `kv` (causal mode): x is the next chunk of a video whose earlier chunks are in the KV cache.
        `image` (B, Li, image_dim): CLIP tokens, for a DiT with an image branch (Wan2.1 I2V: 257 penultimate-layer
        tokens of ViT-H/14; FLF2V: 514, the first image's then the last's), and only for it."""
        if kv is not None and self.config.attention != "causal":
            raise ValueError("a KV cache needs a causal DiT (attention='causal')")
        if image is not None and self.img_emb is None:
            raise ValueError("image tokens given to a DiT without an image branch (only Wan2.1 I2V/FLF2V take them)")
        if image is None and self.img_emb is not None:
            raise ValueError("this DiT (Wan2.1 I2V/FLF2V) needs the image's CLIP tokens (image=...)")
        pt, ph, pw = self.config.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        tokens = rearrange(self.patch_embedding(x), "b d f h w -> b (f h w) d")    # (B, L, D)
        t = t.reshape(t.shape[0], -1)                                             # (B, 1) or (B, L)
        temb = self.time_embedding(timestep_embedding(t, self.config.freq_dim).to(tokens.dtype))  # (B, Lt, D)
        e0 = self.time_projection(temb).unflatten(-1, (6, -1))                    # (B, Lt, 6, D)
        context, text_bias = collapse_padding(context.to(tokens.dtype))
        context = self.text_embedding(context)                                    # (B, Lt_text, D)
        image = self.img_emb(image.to(tokens.dtype)) if image is not None else None   # (B, Li, D)
        offset = kv.frame_offset if kv is not None else 0
        layout = TokenGrid(grid, rope_table(grid, self.config.head_dim, x.device, offset), kv, text_bias, image)
        for block in self.blocks:
            tokens = block(tokens, e0, context, layout)
        out = self.head(tokens, temb)                                             # (B, L, pt*ph*pw*C)
        return rearrange(out, "b (f h w) (p q r c) -> b c (f p) (h q) (w r)",
                         f=grid[0], h=grid[1], w=grid[2], p=pt, q=ph, r=pw)
