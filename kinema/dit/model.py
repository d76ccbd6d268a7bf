"""Diffusion transformer (the Wan DiT design): one class, the tiny default and the Wan sizes are configs.

    latents (B, C, F, H, W) --3D patch embed--> tokens (B, L, D), L = F * H/2 * W/2
    t (B,) or per-token (B, L) --sinusoid + MLP--> temb, and 6 modulation vectors per block
    text (B, Lt, text_dim) --MLP--> context (B, Lt, D)
    N x block: adaLN-modulated self-attention (QK RMS-norm, 3D RoPE) -> cross-attention to the text -> FFN, gated
    head: adaLN from temb -> linear -> unpatchify -> velocity (B, C_out, F, H, W)

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

from kinema.dit.rope import apply_rope, axis_dims, rope_table


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

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or min(axis_dims(self.head_dim)) <= 0:
            raise ValueError(f"head_dim {self.head_dim} too small or odd for 3D RoPE")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        return cls(**{k: tuple(v) if k == "patch_size" else v for k, v in d.items()})


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
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (Wan keeps norms in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class Attention(nn.Module):
    """Multi-head attention with q/k RMS-norm across heads; RoPE when tables are given (self-attention)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope=None, mask=None) -> torch.Tensor:
        heads = lambda y: rearrange(y, "b l (n d) -> b n l d", n=self.num_heads)  # noqa: E731
        q, k, v = heads(self.norm_q(self.q(x))), heads(self.norm_k(self.k(context))), heads(self.v(context))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, L, hd)
        return self.o(rearrange(y, "b n l d -> b l (n d)"))


class Block(nn.Module):
    """Wan block: modulated self-attn, unmodulated cross-attn, modulated FFN; gated residuals."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, e0, context, rope, mask=None):
        # e0: (B, Lt, 6, D) with Lt = 1 (one timestep per sample) or L (per-token timesteps)
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.unsqueeze(0) + e0.float()).unbind(2)
        h = (self.norm1(x).float() * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.self_attn(h, h, rope, mask).float() * gate).type_as(x)
        x = x + self.cross_attn(self.norm3(x), context)
        h = (self.norm2(x).float() * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size))
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
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
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

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask=None) -> torch.Tensor:
        """x (B, C, F, H, W) noisy latents; t (B,) or per-token (B, L) timesteps in [0, 1000]
        (= sigma * 1000); context (B, Lt, text_dim) -> velocity (B, C_out, F, H, W)."""
        pt, ph, pw = self.config.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        tokens = rearrange(self.patch_embedding(x), "b d f h w -> b (f h w) d")    # (B, L, D)
        t = t.reshape(t.shape[0], -1)                                             # (B, 1) or (B, L)
        temb = self.time_embedding(timestep_embedding(t, self.config.freq_dim).to(tokens.dtype))  # (B, Lt, D)
        e0 = self.time_projection(temb).unflatten(-1, (6, -1))                    # (B, Lt, 6, D)
        context = self.text_embedding(context.to(tokens.dtype))                   # (B, Lt_text, D)
        rope = rope_table(grid, self.config.head_dim, x.device)
        for block in self.blocks:
            tokens = block(tokens, e0, context, rope, mask)
        out = self.head(tokens, temb)                                             # (B, L, pt*ph*pw*C)
        return rearrange(out, "b (f h w) (p q r c) -> b c (f p) (h q) (w r)",
                         f=grid[0], h=grid[1], w=grid[2], p=pt, q=ph, r=pw)
