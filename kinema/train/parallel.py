"""Processes, devices and memory of a training run: torchrun/DDP/FSDP2, bf16 autocast, activation checkpointing.

    torchrun --nproc_per_node 2 -m kinema.train.dit --cache cache/ --out runs/x ...     (or kinema train --nproc 2)

Under torchrun each process joins the group (NCCL on CUDA, gloo on CPU) and the DiT is wrapped in DDP, or sharded
with FSDP2 (`fully_shard` per block, then the whole model) with `--fsdp`. Rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int                      # this process's rank (0 without torchrun)
    world: int                     # number of processes
    local_rank: int                # rank on this machine: picks the GPU
    device: torch.device           # where the DiT trains
    autocast: torch.dtype | None   # bf16 autocast dtype, or None for plain fp32
    fsdp: bool = False             # the DiT is sharded with FSDP2 (else replicated: DDP when world > 1)

    @property
    def main(self) -> bool:
        return self.rank == 0


def add_args(p) -> None:
    g = p.add_argument_group("processes, precision and memory")
    g.add_argument("--nproc", type=int, default=1, help="processes on this machine: relaunches under torchrun")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast; auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument("--fsdp", action="store_true", help="shard the DiT with FSDP2 instead of replicating it (DDP)")
    g.add_argument("--grad-checkpoint", action="store_true", help="recompute each DiT block in the backward pass")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (--batch is global)")


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """The torchrun command line that runs this trainer in `nproc` processes (without the --nproc flag)."""
    import sys

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "kinema.train.dit", *rest]


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device(name)


def init(device: str = "auto", precision: str = "auto", fsdp: bool = False) -> Dist:
    """Join the torchrun process group (if launched by torchrun) and resolve device and precision."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    use_bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    return Dist(rank, world, local_rank, dev, torch.bfloat16 if use_bf16 else None, fsdp and world > 1)


def seed_rank(seed: int, d: Dist) -> None:
    """Per-rank seed of the global RNG (anything random that is not drawn from the run's shared generator)."""
    if d.world > 1:
        torch.manual_seed(seed + d.rank)


def autocast(d: Dist):
    if d.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=d.device.type, dtype=d.autocast)


def checkpoint_blocks(dit: nn.Module) -> None:
    """Activation checkpointing per DiT block: each block's activations are recomputed in the backward pass."""
    for block in dit.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def shard(dit: nn.Module) -> None:
    """FSDP2, in place: each block is one unit (gathered just for its own forward/backward), then the rest."""
    from torch.distributed.fsdp import fully_shard

    for block in dit.blocks:
        fully_shard(block)
    fully_shard(dit)


def wrap(dit: nn.Module, d: Dist, grad_checkpoint: bool = False, ema_model: nn.Module | None = None) -> nn.Module:
    """The module the training step calls: the DiT itself, in DDP, or sharded in place by FSDP2 (and then the EMA
    copy is sharded the same way, so each rank averages its own shard)."""
    if grad_checkpoint:
        checkpoint_blocks(dit)
    if d.world == 1:
        return dit
    if d.fsdp:
        shard(dit)
        if ema_model is not None:
            shard(ema_model)
        return dit
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(dit, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def no_sync(model: nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if last:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):                       # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):   # FSDP2
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate every rank's x (same shape on each) along dim 0, in rank order."""
    if d.world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_objects(obj, d: Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def finish(d: Dist) -> None:
    """Leave the process group. Call it after the run's modules are dropped: FSDP2's sharded parameters hold the
    group, and a gloo group that outlives `destroy_process_group` is torn down with the interpreter, where its
    threads abort the process now and then (`terminate called without an active exception`, exit -6)."""
    if d.world > 1 and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first(d: Dist):
    """Rank 0 runs the block first (e.g. builds a file), then the other ranks (which can read it)."""
    if d.world > 1 and not d.main:
        dist.barrier()
    yield
    if d.world > 1 and d.main:
        dist.barrier()


def full_states(dit: nn.Module, ema, opt, d: Dist) -> dict:
    """Under FSDP: the whole (unsharded) model, EMA and optimizer states on rank 0, gathered from every rank (all
    ranks must call this). Otherwise {}: every rank holds them whole already."""
    if not d.fsdp:
        return {}
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"model": get_model_state_dict(dit, options=opts), "ema": get_model_state_dict(ema.model, options=opts),
            "opt": get_optimizer_state_dict(dit, opt, options=opts)}


def load_full_states(dit: nn.Module, ema, opt, ck: dict) -> None:
    """Inverse of `full_states`: every rank loads the whole states from the checkpoint into its shards."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(dit, ck["model"], options=opts)
    set_model_state_dict(ema.model, ck["ema"], options=opts)
    set_optimizer_state_dict(dit, opt, ck["opt"], options=opts)


def full_model(model: nn.Module, state: dict | None) -> nn.Module:
    """`model` itself, or (given its gathered state under FSDP) an unsharded copy of it on the CPU."""
    if state is None:
        return model
    from kinema.dit.model import DiT

    whole = DiT(model.config)
    whole.load_state_dict(state)
    return whole
