"""Wan LoRA files -> kinema's per-layer LoRA tensors, whatever key layout they use.

    diffusers / peft   transformer.blocks.0.attn1.to_q.lora_A.weight, .lora_B.weight  (diffusers' module names;
                       alpha from the `lora_adapter_metadata` peft config, else alpha = rank as diffusers assumes)
    ComfyUI / kinema   diffusion_model.blocks.0.self_attn.q.lora_down.weight, .lora_up.weight, .alpha
                       (original Wan names; lora_A / lora_B also accepted; no alpha key: alpha = rank)
    musubi-tuner       lora_unet_blocks_0_self_attn_q.lora_down.weight, .lora_up.weight, .alpha

Any Linear layer of the model can be adapted (attention, FFN, the time/text embeddings, the head). Keys that fit
no layer (another model size, Wan 2.1 I2V's k_img/v_img, full-weight `.diff` / bias `.diff_b` patches, DoRA
scales) are returned with the reason, so the caller reports them in one place ("lora key not loaded").
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kinema.convert.wan import diffusers_dit_key
from kinema.dit.lora import FILE_FORMAT, LoRAConfig, LoRAError, LoRATensors

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(?P<module>.+?)\.(?:(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.[\w-]+)?\.weight"
                  r"|(?P<alpha>alpha))$")
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.")
_MUSUBI = "lora_unet_"
_DOWN, _UP = ("lora_A", "lora_down"), ("lora_B", "lora_up")
# (key ending, why it is not loaded) for keys that are not LoRA pairs
_UNSUPPORTED = ((".diff_b", "bias patch (.diff_b), not a LoRA"), (".diff", "full-weight patch (.diff), not a LoRA"),
                ("dora_scale", "DoRA scale (DoRA is not supported)"), (".bias", "LoRA bias (lora_bias)"))


@dataclass
class LoadedLoRA:
    weights: dict[str, LoRATensors]                            # kinema layer path -> tensors
    layout: str                                                # "kinema", "diffusers", "ComfyUI" or "musubi"
    config: LoRAConfig | None = None                           # rank / alpha / targets when the file records them
    unmatched: dict[str, str] = field(default_factory=dict)    # file key -> why it was not loaded


@dataclass
class _Group:
    """The keys of one adapted layer in the file."""

    keys: list[str] = field(default_factory=list)
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


def _peft_config(metadata: dict[str, str]) -> dict:
    """diffusers' `lora_adapter_metadata` (a peft LoraConfig, keys prefixed `transformer.`), or {}."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LoRAError(f"unreadable lora_adapter_metadata: {e}") from None
    cfg = {k.removeprefix("transformer."): v for k, v in packed.items()
           if k.startswith("transformer.") or "." not in k}
    if cfg.get("use_dora"):
        raise LoRAError("DoRA adapters (use_dora) are not supported")
    return cfg


def _peft_alpha(cfg: dict, module: str, rank: int) -> float | None:
    """peft's alpha for a module (alpha_pattern, else lora_alpha; rsLoRA scales by alpha / sqrt(rank))."""
    if not cfg:
        return None
    alpha = cfg.get("lora_alpha", rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            alpha = value
            break
    return float(alpha) * (rank**0.5 if cfg.get("use_rslora") else 1.0)


def _group_keys(state: dict[str, torch.Tensor], unmatched: dict[str, str]) -> dict[str, _Group]:
    """File module name -> its down / up / alpha; keys that are not LoRA pairs go to `unmatched`."""
    groups: dict[str, _Group] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            reason = next((why for end, why in _UNSUPPORTED if key.endswith(end)), "not a LoRA key")
            unmatched[key] = reason
            continue
        g = groups.setdefault(m["module"], _Group())
        g.keys.append(key)
        if m["alpha"]:
            g.alpha = float(value.float().item())
        elif m["part"] in _DOWN:
            g.down = value
        else:
            g.up = value
    return groups


class _Resolver:
    """File module names (any layout) -> kinema layer paths."""

    def __init__(self, linears: set[str]):
        self.linears = linears
        self.underscored = {p.replace(".", "_"): p for p in linears}
        self.layouts: Counter[str] = Counter()

    def __call__(self, module: str) -> tuple[str | None, str]:
        """(kinema path or None, module name as diffusers/peft would see it) for a file module name."""
        if module.startswith(_MUSUBI):
            self.layouts["musubi"] += 1
            return self.underscored.get(module[len(_MUSUBI):]), module
        name = next((module[len(p):] for p in _PREFIXES if module.startswith(p)), module)
        if name in self.linears:
            self.layouts["ComfyUI"] += 1
            return name, name
        converted = diffusers_dit_key(name + ".weight").removesuffix(".weight")
        if converted != name:
            self.layouts["diffusers"] += 1
        return (converted if converted in self.linears else None), name


def _checked(group: _Group, layer: nn.Linear, alpha: float | None) -> LoRATensors | str:
    """The layer's tensors, or why they do not fit."""
    if group.down is None or group.up is None:
        return "lora_down/lora_A without its lora_up/lora_B (or the reverse)"
    down, up = group.down.float(), group.up.float()
    if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
        return f"down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair"
    if down.shape[1] != layer.in_features or up.shape[0] != layer.out_features:
        return (f"shape does not fit: LoRA {down.shape[1]} -> {up.shape[0]}, layer {layer.in_features} -> "
                f"{layer.out_features} (a LoRA for another model size?)")
    rank = down.shape[0]
    return LoRATensors(down.contiguous(), up.contiguous(), group.alpha if group.alpha is not None else
                       (alpha if alpha is not None else float(rank)))


def convert_lora_state(state: dict[str, torch.Tensor], model: nn.Module,
                       metadata: dict[str, str] | None = None) -> LoadedLoRA:
    """Match a LoRA state dict (any supported layout) to the model's Linear layers."""
    metadata = metadata or {}
    peft = _peft_config(metadata)
    unmatched: dict[str, str] = {}
    groups = _group_keys(state, unmatched)
    layers = {p: m for p, m in model.named_modules() if isinstance(m, nn.Linear) and p}
    resolve = _Resolver(set(layers))
    weights: dict[str, LoRATensors] = {}
    for module, group in groups.items():
        path, peft_name = resolve(module)
        if path is None:
            unmatched.update(dict.fromkeys(group.keys, "no Linear layer of this name in the model"))
            continue
        rank = group.down.shape[0] if group.down is not None else 1
        result = _checked(group, layers[path], _peft_alpha(peft, peft_name, rank))
        if isinstance(result, str):
            unmatched.update(dict.fromkeys(group.keys, result))
        else:
            weights[path] = result
    config = LoRAConfig.from_metadata(metadata) if metadata.get("format") == FILE_FORMAT else None
    layout = "kinema" if config else (resolve.layouts.most_common(1)[0][0] if resolve.layouts else "unknown")
    return LoadedLoRA(weights, layout, config, unmatched)


def summarise_keys(keys: dict[str, str], limit: int = 12) -> str:
    """Unmatched keys grouped by reason, block numbers folded: `blocks.*.cross_attn.k_img.lora_down.weight (x30)`."""
    groups: dict[str, Counter[str]] = {}
    for key, reason in keys.items():
        groups.setdefault(reason, Counter())[re.sub(r"(blocks[._])\d+", r"\1*", key)] += 1
    parts = []
    for reason, patterns in groups.items():
        shown = [f"{p} (x{n})" if n > 1 else p for p, n in patterns.most_common(limit)]
        more = f", ... {len(patterns) - limit} more" if len(patterns) > limit else ""
        parts.append(f"{reason}: {', '.join(shown)}{more}")
    return "; ".join(parts)


def read_lora_file(path: str | os.PathLike, model: nn.Module) -> LoadedLoRA:
    """Read a .safetensors LoRA file and match it to the model. Logs one warning listing the keys that were not
    loaded; LoRAError when the file cannot be read or no key fits."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoRAError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise LoRAError(f"LoRA file {path}: only .safetensors files are read")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LoRAError(f"cannot read LoRA file {path}: {e}") from None
    try:
        loaded = convert_lora_state(state, model, metadata)
    except LoRAError as e:
        raise LoRAError(f"LoRA file {path}: {e}") from None
    if not loaded.weights:
        raise LoRAError(f"LoRA file {path}: none of its {len(state)} keys fits this model ("
                        f"{summarise_keys(loaded.unmatched, limit=3)})")
    if loaded.unmatched:
        log.warning("LoRA file %s: %d of %d keys not loaded: %s", path,
                                            len(loaded.unmatched), len(state), summarise_keys(loaded.unmatched))
    return loaded
