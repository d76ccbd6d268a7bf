"""Memory plans: where a pipeline's components live while it generates, chosen from the device's free memory.

    none        every component stays on the device (fastest)
    model       components live on the CPU; each moves to the device when it runs and sends the previous one back
                (the DiT runs all steps in one go, so it moves once per generation; A14B's two experts swap once,
                at the boundary)
    sequential  the DiT's blocks live on the CPU and visit the device one at a time, in every forward (the
                smallest footprint: one block plus the DiT's small embeddings and head); the VAE as in "model"

In every plan but "none" with room to spare, the text encoder runs on the CPU and its embeddings are cached per
prompt (`kinema.text.encoder.TextEncoder`), so the (11 GB) umT5 never takes device memory. Weights keep the dtype
they were loaded in (bf16 on a GPU, with fp32 norms and modulation tables: `kinema.pipelines.wan.dit_to`).

`choose_plan` decides from byte counts and `torch.cuda.mem_get_info`; `--offload` overrides it. On a CPU every
plan is the same computation (the moves are no-ops), which is how the tests check that offloading changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("auto", "none", "model", "sequential")
HEADROOM = 0.9  # plan with this fraction of the free memory (allocator fragmentation, CUDA context, kernels)


@dataclass(frozen=True)
class MemoryPlan:
    offload: str          # "none", "model" or "sequential" (see the module docstring)
    text_on_cpu: bool     # the text encoder runs on the CPU (its embeddings cached per prompt)
    reason: str = ""      # why this plan, for the log


@dataclass(frozen=True)
class Footprint:
    """Bytes a pipeline needs on the device, per part (weights at their loaded dtype; activations estimated)."""
    dits: tuple[int, ...]     # each DiT (A14B: two experts)
    largest_block: int        # the largest transformer block of any DiT
    dit_shell: int            # a DiT's parameters outside its blocks (embeddings, head)
    vae: int
    text: int
    activations: int          # peak working memory of one DiT forward (see `dit_activation_bytes`)


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def dit_activation_bytes(dim: int, ffn_dim: int, tokens: int, batch: int, element_size: int) -> int:
    """A rough peak of one DiT forward: the residual stream, a block's q/k/v/attention output and FFN hidden
    states for every token (SDPA keeps attention itself O(tokens)), x2 for temporaries."""
    return 2 * batch * tokens * (6 * dim + ffn_dim) * element_size


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (`torch.cuda.mem_get_info`), None for other devices."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def choose_plan(fp: Footprint, free: int | None, requested: str = "auto") -> MemoryPlan:
    """The fastest plan that fits in `free` bytes (None: not a GPU, nothing to plan), or `requested`."""
    if requested not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {requested!r}")
    if requested != "auto":
        text_fits = free is None or sum(fp.dits) + fp.vae + fp.text + fp.activations <= HEADROOM * free
        return MemoryPlan(requested, requested != "none" or not text_fits, "asked for")
    if free is None:
        return MemoryPlan("none", False, "not a CUDA device")
    budget, gib = HEADROOM * free, free / 2**30
    resident = sum(fp.dits) + fp.vae + fp.activations
    if resident + fp.text <= budget:
        return MemoryPlan("none", False, f"everything fits in {gib:.1f} GiB free")
    if resident <= budget:
        return MemoryPlan("none", True, f"all but the text encoder fit in {gib:.1f} GiB free")
    if max(*fp.dits, fp.vae) + fp.activations <= budget:
        return MemoryPlan("model", True, f"one component at a time fits in {gib:.1f} GiB free")
    need = fp.largest_block + fp.dit_shell + fp.activations
    if need > budget:
        log.warning("even one DiT block at a time (%.1f GiB) may not fit in %.1f GiB free", need / 2**30, gib)
    return MemoryPlan("sequential", True, f"only block by block fits in {gib:.1f} GiB free")


# ---- applying a plan ------------------------------------------------------------------------------------------------

class OffloadGroup:
    """Modules of which at most one is on `device` at a time: the one about to run is moved there and the
    previous one back to the CPU (pre-forward hooks on the module, or on the submodules that `triggers` lists)."""

    def __init__(self, device: torch.device):
        self.device, self.resident, self.moves = torch.device(device), None, 0

    def add(self, module: nn.Module, triggers: list[nn.Module] | None = None) -> None:
        module.to("cpu")
        for trigger in triggers or [module]:
            trigger.register_forward_pre_hook(lambda _m, _args, target=module: self.activate(target))

    def activate(self, module: nn.Module) -> None:
        if self.resident is module:
            return
        if self.resident is not None:
            self.resident.to("cpu")
        module.to(self.device)
        self.resident, self.moves = module, self.moves + 1


class BlockStreamer:
    """A DiT's blocks kept on the CPU, each moved to `device` for its own forward and back right after; the rest of
    the DiT (embeddings, head: a few hundred MB) stays on the device."""

    def __init__(self, dit: nn.Module, device: torch.device):
        self.device, self.moves = torch.device(device), 0
        for name, child in dit.named_children():
            if name != "blocks":  # never the whole DiT at once: it may not fit
                child.to(self.device)
        for block in dit.blocks:
            block.to("cpu")
            block.register_forward_pre_hook(self._load)
            block.register_forward_hook(self._unload)

    def _load(self, block: nn.Module, _args) -> None:
        block.to(self.device)
        self.moves += 1

    def _unload(self, block: nn.Module, _args, _out) -> None:
        block.to("cpu")


def footprint(pipe, tokens: int, batch: int = 2) -> Footprint:
    """The `Footprint` of a text-to-video pipeline for `tokens` video tokens and a CFG batch of `batch`."""
    dits = pipe.experts
    blocks = [module_bytes(b) for d in dits for b in d.blocks]
    c = pipe.dit.config
    size = next(pipe.dit.parameters()).element_size()
    text_model = getattr(pipe.text_encoder, "_model", None)
    text = module_bytes(text_model) if text_model is not None else text_bytes_estimate(pipe.text_encoder)
    return Footprint(dits=tuple(module_bytes(d) for d in dits), largest_block=max(blocks, default=0),
                     dit_shell=module_bytes(dits[0]) - sum(module_bytes(b) for b in dits[0].blocks),
                     vae=module_bytes(pipe.vae), text=text,
                     activations=dit_activation_bytes(c.dim, c.ffn_dim, tokens, batch, size))


def text_bytes_estimate(encoder) -> int:
    """Bytes of a not yet loaded text encoder: its weights file's size (umT5-xxl bf16: ~11 GB), or 0."""
    from pathlib import Path

    from kinema.text.encoder import resolve_source

    try:
        path = resolve_source(encoder.config.source)
    except (FileNotFoundError, ImportError):
        return 0
    files = [path] if path.is_file() else [*Path(path).glob("*.safetensors"), *Path(path).glob("*.bin")]
    return sum(f.stat().st_size for f in files)


def apply_plan(pipe, plan: MemoryPlan, device: torch.device) -> None:
    """Place the pipeline's components (loaded on the CPU) for `plan`, installing the offload hooks."""
    device = torch.device(device)
    dits = pipe.experts
    text = pipe.text_encoder
    if plan.text_on_cpu and text.device != torch.device("cpu"):
        text.device = torch.device("cpu")  # it loads (or is moved) where it is told; embeddings follow the pipeline
        if getattr(text, "_model", None) is not None:
            text._model.to("cpu")
    if plan.offload == "none":
        for module in (*dits, pipe.vae):
            module.to(device)
        return
    group = OffloadGroup(device)
    group.add(pipe.vae, [m for m in pipe.vae.children()])
    if plan.offload == "model":
        for dit in dits:
            group.add(dit)
    else:
        pipe.streamers = [BlockStreamer(dit, device) for dit in dits]
    pipe.offload_group = group
    log.info("memory plan: %s offload, text encoder on %s (%s)", plan.offload,
             "the CPU" if plan.text_on_cpu else str(device), plan.reason)


def plan_memory(pipe, device: torch.device, requested: str = "auto") -> MemoryPlan:
    """Choose a plan for the pipeline's default video size on `device` and apply it (components on the CPU)."""
    c, t, h, w = pipe.latent_shape(pipe.defaults)
    _, ph, pw = pipe.dit.config.patch_size
    plan = choose_plan(footprint(pipe, t * (h // ph) * (w // pw)), free_memory(torch.device(device)), requested)
    apply_plan(pipe, plan, device)
    return plan
