"""Pieces every training loop shares: LR schedule, EMA, atomic checkpoints, JSONL metrics, RNG state."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kinema.atomic import temp_beside

log = logging.getLogger(__name__)


def lr_at(step: int, base_lr: float, warmup: int, total: int, final_frac: float = 0.1) -> float:
    """Linear warmup to base_lr, then cosine decay to final_frac * base_lr at `total` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a model's parameters (buffers copied as they are)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm up the decay so early averages are not stale
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state(np_rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np_rng.bit_generator.state, "python": random.getstate()}


def set_rng_state(state: dict, np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])


class MetricsLog:
    """Appends one JSON object per line; also logs a short line every `every` steps."""

    def __init__(self, path: str | Path, every: int = 50, resume_step: int | None = None, total: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.every, self.total = every, total  # with `total`, the logged line also gives it/s and the ETA
        self.t0 = time.time()
        self._mark = (resume_step or 0, self.t0)
        if resume_step is not None and self.path.exists():  # drop lines logged after the checkpoint we resume
            kept = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, step: int, **metrics) -> None:
        rec = {"step": step, "time": round(time.time() - self.t0, 2), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if step % self.every == 0:
            line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
            log.info(line + self._speed(step))

    def _speed(self, step: int) -> str:
        if not self.total:
            return ""
        (s0, t0), now = self._mark, time.time()
        self._mark = (step, now)
        rate = (step - s0) / max(now - t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        return f" {rate:.3g} it/s ETA {eta / 60:.1f} min"


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, ema: EMA, loss: torch.Tensor, step: int,
                   clip: float = 1.0) -> float:
    """Backward, clip the gradient norm, step, update the EMA; returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return apply_gradients(model, opt, ema, step, clip)


def apply_gradients(model: nn.Module, opt: torch.optim.Optimizer, ema: EMA, step: int, clip: float = 1.0) -> float:
    """Clip the (accumulated) gradient norm, step, clear the gradients, update the EMA; returns the norm before
    clipping."""
    gnorm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update(model, step)
    return float(gnorm)


def set_lr(opt: torch.optim.Optimizer, step: int, args) -> float:
    lr = lr_at(step, args.lr, args.warmup, args.steps)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def save_checkpoint(path: Path, model: nn.Module, ema: EMA, opt, step: int, np_rng: np.random.Generator,
                    args, gen: torch.Generator | None = None, extra: dict | None = None) -> None:
    """Everything a run needs to continue exactly: weights, EMA, optimizer, step, RNG states, config, args;
    `extra` adds entries (data position, per-rank RNG states) or replaces them (gathered sharded weights)."""
    atomic_save({"model": model.state_dict(), "ema": ema.model.state_dict(), "opt": opt.state_dict(),
                 "step": step, "rng": rng_state(np_rng), "gen": gen.get_state() if gen is not None else None,
                 "config": model.config.to_dict(), "args": vars(args), **(extra or {})}, path)


def resume(path: Path, model: nn.Module, ema: EMA, opt, np_rng: np.random.Generator,
           gen: torch.Generator | None = None, on_load=None, load_states=None) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns its step (0 when there is none).
    `on_load(checkpoint)` restores whatever `extra` added; `load_states(checkpoint)`, when given, loads the model,
    EMA and optimizer states instead of plain `load_state_dict` (sharded models)."""
    if not path.exists():
        return 0
    ck = torch.load(path, weights_only=False, map_location="cpu")
    if load_states is not None:
        load_states(ck)
    else:
        model.load_state_dict(ck["model"])
        ema.model.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
    set_rng_state(ck["rng"], np_rng)
    if gen is not None:
        gen.set_state(ck["gen"])
    if on_load is not None:
        on_load(ck)
    log.info("resumed from step %d", ck["step"])
    return ck["step"]


def run_main(parse_args, train, argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))
    return 0


def start_run(args) -> np.random.Generator:
    """Threads and seeds of a training run; returns its numpy generator."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return np.random.default_rng(args.seed)
