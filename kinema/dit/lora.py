"""LoRA for the DiT: low-rank updates of its Linear layers, several adapters at once, each with its own strength.

    y = W x + b + sum over adapters a of  strength_a * (alpha_a / rank_a) * up_a(down_a(x))

    down (rank, in) and up (out, rank) are peft's lora_A / lora_B and ComfyUI's lora_down / lora_up.

An adapted layer becomes a `LoRALinear`: an `nn.Linear` that keeps the original weight and bias under the same
names (`blocks.0.self_attn.q.weight`), and holds the adapters in `.adapters[name]`. Everything lives on the model
itself, so a deep copy (EMA) or `state_dict()` carries the adapters; nothing is global.

    cfg = LoRAConfig(rank=16, alpha=16)
    params = inject_lora(dit, cfg, "pink")          # fresh trainable adapter (up = 0: the model is unchanged)
    save_lora("pink.safetensors", dit, "pink", cfg)
    name = load_lora(dit, "style.safetensors", strength=0.8)   # kinema, diffusers/peft or ComfyUI/musubi files
    merge_lora(dit); unmerge_lora(dit)              # fold into the weights and back, bit for bit
    remove_lora(dit)                                # the plain model again

Files are written in the ComfyUI layout with the original Wan names (`diffusion_model.blocks.0.self_attn.q
.lora_down.weight`, `.lora_up.weight`, `.alpha`), plus rank, alpha and targets in the safetensors metadata, so
ComfyUI and diffusers read them as well.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from kinema.convert.torch_files import atomic_save_safetensors
from kinema.dit.linear import linear

log = logging.getLogger(__name__)

# The Linear layers of a block that LoRA adapts by default: attention q/k/v/o (self and cross) and the FFN.
BLOCK_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
FILE_FORMAT = "kinema-lora"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LoRAError(ValueError):
    """A LoRA file or request that cannot be applied; the message says which file or adapter and why."""


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16                                # r: width of the low-rank bottleneck
    alpha: float = 16.0                           # the update is scaled by alpha / rank (peft's lora_alpha)
    targets: tuple[str, ...] = BLOCK_TARGETS      # Linear layers adapted in every block, named inside the block

    def __post_init__(self):
        if self.rank < 1:
            raise LoRAError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise LoRAError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise LoRAError("LoRA needs at least one target layer")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_metadata(self) -> dict[str, str]:
        return {"rank": str(self.rank), "alpha": repr(float(self.alpha)), "targets": json.dumps(list(self.targets))}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "LoRAConfig":
        return cls(int(meta["rank"]), float(meta["alpha"]), tuple(json.loads(meta["targets"])))


class LoRATensors(NamedTuple):
    """One layer's update: down (rank, in), up (out, rank), alpha (the scale is alpha / rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float


class LoRAUpdate(nn.Module):
    """One adapter's update of one Linear layer: (alpha / rank) * up(down(x)). up starts at zero."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)   # default (Kaiming-uniform) init, as peft's lora_A
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.up.weight)
        self.alpha = float(alpha)

    @property
    def scale(self) -> float:
        return self.alpha / self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update as a full (out, in) weight, computed in fp32."""
        return (self.up.weight.float() @ self.down.weight.float()) * self.scale


class LoRALinear(nn.Linear):
    """An nn.Linear with LoRA adapters. Its weight and bias are the original layer's Parameters (same names).

    `strength[name]` multiplies adapter `name`; a merged adapter is folded into `weight` and skipped in forward.
    Merging first keeps a CPU copy of the weight, so unmerging restores it exactly.
    """

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapters = nn.ModuleDict()
        self.strength: dict[str, float] = {}
        self.merged: dict[str, float] = {}            # adapter -> strength it was folded in with
        self.original: torch.Tensor | None = None     # weight before the first merge (CPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        for name, update in self.adapters.items():
            s = self.strength[name]
            if s != 0 and name not in self.merged:
                y = y + update(x) * s
        return y

    def base_linear(self) -> nn.Linear:
        """A plain nn.Linear sharing this layer's weight and bias."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if name in self.merged:
            return
        if self.original is None:
            self.original = self.weight.detach().to("cpu", copy=True)
        self.weight += (self.adapters[name].delta_weight() * self.strength[name]).to(self.weight.dtype)
        self.merged[name] = self.strength[name]

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Restore the saved weight and fold the other merged adapters back in, in their order."""
        if self.merged.pop(name, None) is None:
            return
        self.weight.copy_(self.original)
        for other, strength in self.merged.items():
            self.weight += (self.adapters[other].delta_weight() * strength).to(self.weight.dtype)
        if not self.merged:
            self.original = None


# ---- adapters on a model -------------------------------------------------------------------------------------------

def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def linear_paths(model: nn.Module) -> set[str]:
    """Paths of every Linear layer of the model (the layers a LoRA file may adapt)."""
    return {path for path, m in model.named_modules() if isinstance(m, nn.Linear) and path}


def target_paths(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full paths `blocks.{i}.{target}` of the targeted layers in every block; LoRAError if one is not a Linear."""
    linears = linear_paths(model)
    paths = [f"blocks.{i}.{t}" for i in range(len(model.blocks)) for t in targets]
    bad = [p for p in paths if p not in linears]
    if bad:
        raise LoRAError(f"LoRA targets {sorted({p.split('.', 2)[2] for p in bad})} are not Linear layers of the "
                        f"DiT blocks; choose from {list(BLOCK_TARGETS)}")
    return paths


def _lora_linear(model: nn.Module, path: str) -> LoRALinear:
    """The layer at `path` as a LoRALinear, replacing a plain nn.Linear in its parent if needed."""
    layer = model.get_submodule(path)
    if isinstance(layer, LoRALinear):
        return layer
    parent_path, _, child = path.rpartition(".")
    wrapped = LoRALinear(layer)
    setattr(model.get_submodule(parent_path), child, wrapped)
    return wrapped


def _check_new_name(model: nn.Module, name: str) -> None:
    if not _NAME.match(name):
        raise LoRAError(f"adapter name {name!r} must be letters, digits and underscores")
    if name in adapter_names(model):
        raise LoRAError(f"an adapter named {name!r} is already loaded; remove it first or choose another name")


def add_adapter(model: nn.Module, name: str, weights: dict[str, LoRATensors], strength: float = 1.0) -> None:
    """Attach adapter `name` with the given per-layer tensors (layer path -> LoRATensors), on the layers'
    device and dtype. Shapes are checked before anything is attached."""
    _check_new_name(model, name)
    linears = linear_paths(model)
    for path, w in weights.items():
        if path not in linears:
            raise LoRAError(f"adapter {name!r}: {path} is not a Linear layer of the model")
        layer = model.get_submodule(path)
        if w.down.shape[1] != layer.in_features or w.up.shape[0] != layer.out_features \
                or w.down.shape[0] != w.up.shape[1]:
            raise LoRAError(f"adapter {name!r}: {path} has down {tuple(w.down.shape)} / up {tuple(w.up.shape)}, "
                            f"the layer is {layer.in_features} -> {layer.out_features}")
    for path, w in weights.items():
        layer = _lora_linear(model, path)
        update = LoRAUpdate(layer.in_features, layer.out_features, w.down.shape[0], w.alpha)
        update.down.weight.data.copy_(w.down)
        update.up.weight.data.copy_(w.up)
        layer.adapters[name] = update.to(layer.weight.device, layer.weight.dtype)
        layer.strength[name] = float(strength)


def inject_lora(model: nn.Module, config: LoRAConfig, name: str = "default", strength: float = 1.0,
                generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """A fresh trainable adapter on the config's targets (down random, up zero); returns its parameters."""
    weights = {}
    for path in target_paths(model, config.targets):
        layer = model.get_submodule(path)
        down = torch.empty(config.rank, layer.in_features)
        nn.init.kaiming_uniform_(down, a=5**0.5, generator=generator)  # nn.Linear's default init
        weights[path] = LoRATensors(down, torch.zeros(layer.out_features, config.rank), config.alpha)
    add_adapter(model, name, weights, strength)
    return adapter_parameters(model, name)


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for layer in _layers_with(model, name) for p in layer.adapters[name].parameters()]


def train_only(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Freeze the model except adapter `name`; returns the trainable parameters."""
    model.requires_grad_(False)
    params = adapter_parameters(model, name)
    for p in params:
        p.requires_grad_(True)
    return params


def _layers_with(model: nn.Module, name: str) -> list[LoRALinear]:
    layers = [layer for layer in lora_layers(model).values() if name in layer.adapters]
    if not layers:
        raise LoRAError(f"no adapter named {name!r} is loaded (loaded: {adapter_names(model) or 'none'})")
    return layers


def _names(model: nn.Module, name: str | None) -> list[str]:
    return adapter_names(model) if name is None else [name]


def set_strength(model: nn.Module, name: str, strength: float) -> None:
    """Change an adapter's strength (a merged adapter is re-merged with the new strength)."""
    for layer in _layers_with(model, name):
        merged = name in layer.merged
        layer.unmerge(name)
        layer.strength[name] = float(strength)
        if merged:
            layer.merge(name)


def merge_lora(model: nn.Module, name: str | None = None) -> None:
    """Fold adapter `name` (default: all) into the weights: same output, no extra cost per step."""
    for n in _names(model, name):
        for layer in _layers_with(model, n):
            layer.merge(n)


def unmerge_lora(model: nn.Module, name: str | None = None) -> None:
    """Undo `merge_lora` exactly (the weights are restored bit for bit)."""
    for n in _names(model, name):
        for layer in _layers_with(model, n):
            layer.unmerge(n)


def remove_lora(model: nn.Module, name: str | None = None) -> None:
    """Remove adapter `name` (default: all), unmerging it first; layers left without adapters become plain
    nn.Linear layers again."""
    for n in _names(model, name):
        for layer in _layers_with(model, n):
            layer.unmerge(n)
            del layer.adapters[n]
            del layer.strength[n]
    for path, layer in lora_layers(model).items():
        if not len(layer.adapters):
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path), child, layer.base_linear())


def fold_lora(model: nn.Module) -> nn.Module:
    """Bake every adapter into the weights for good (at its strength) and make the layers plain nn.Linear again:
    a standalone model with the base state dict's keys. There is no unmerge afterwards."""
    for name in adapter_names(model):
        merge_lora(model, name)
    for path, layer in lora_layers(model).items():
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path), child, layer.base_linear())
    return model


def adapter_weights(model: nn.Module, name: str) -> dict[str, LoRATensors]:
    """Layer path -> the adapter's tensors (detached, fp32, CPU)."""
    out = {}
    for path, layer in lora_layers(model).items():
        if name in layer.adapters:
            u = layer.adapters[name]
            out[path] = LoRATensors(u.down.weight.detach().float().cpu(), u.up.weight.detach().float().cpu(), u.alpha)
    if not out:
        raise LoRAError(f"no adapter named {name!r} is loaded (loaded: {adapter_names(model) or 'none'})")
    return out


# ---- files ---------------------------------------------------------------------------------------------------------

def save_lora(path: str | os.PathLike, model: nn.Module, name: str, config: LoRAConfig,
              extra_metadata: dict[str, str] | None = None) -> Path:
    """Write adapter `name` as safetensors (ComfyUI layout, original Wan names), atomically."""
    tensors = {}
    for layer, w in adapter_weights(model, name).items():
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = w.down.contiguous()
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = w.up.contiguous()
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(w.alpha, dtype=torch.float32)
    metadata = {"format": FILE_FORMAT, **config.to_metadata(), **(extra_metadata or {})}
    return atomic_save_safetensors(tensors, path, metadata)



def adapter_name_for(model: nn.Module, path: str | os.PathLike) -> str:
    """A free adapter name from a file name: `My Style-v2.safetensors` -> `My_Style_v2` (then `_2`, `_3`...)."""
    stem = re.sub(r"\W", "_", Path(path).stem) or "lora"
    base = stem if _NAME.match(stem) else f"lora_{stem}"
    taken, name, k = set(adapter_names(model)), base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def load_lora(model: nn.Module, path: str | os.PathLike, strength: float = 1.0, name: str | None = None) -> str:
    """Attach the LoRA file at `path` (kinema, diffusers/peft or ComfyUI/musubi layout) to the model; returns the
    adapter's name. Keys that do not fit the model are listed in one warning; LoRAError if none fits."""
    from kinema.convert.lora import read_lora_file

    loaded = read_lora_file(path, model)
    name = name or adapter_name_for(model, path)
    add_adapter(model, name, loaded.weights, strength)
    log.info("LoRA %s: %d layers from %s (%s layout), strength %g", name, len(loaded.weights), path,
             loaded.layout, strength)
    return name
