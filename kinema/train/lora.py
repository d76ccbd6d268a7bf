"""`kinema lora train`: LoRA fine-tuning of a model's DiT through the one DiT training loop (`kinema.train.dit`).

    kinema lora train --model shapes --data clips/ --out runs/style --lora-rank 16 --steps 1000
    kinema lora train --model shapes --shapes-colours pink --pool 20 --out runs/pink      (the synthetic world)

The DiT's weights are frozen; only the adapter (attention q/k/v/o and FFN projections of every block, or
`--lora-targets`) trains. Each checkpoint writes, next to `checkpoint.pt` (which `--resume` continues from):
  lora.safetensors   the EMA adapter (kinema generate --lora runs/pink/lora.safetensors:0.8)
  model/             a standalone model folder with the adapter merged into the DiT
Every other flag is `kinema train`'s (see `kinema train --help`); the defaults differ where LoRA needs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import torch

from kinema.convert.torch_files import atomic_save_safetensors
from kinema.dit.lora import BLOCK_TARGETS, LoRAConfig, fold_lora, inject_lora, save_lora, train_only

log = logging.getLogger(__name__)
ADAPTER = "lora"          # the adapter's name inside the trained DiT
ADAPTER_FILE = "lora.safetensors"
# `kinema train` flags whose defaults suit a short LoRA run better (the user's flags come after and win)
TRAIN_DEFAULTS = ["--steps", "1000", "--lr", "1e-3", "--warmup", "20", "--ema", "0.995", "--pool", "64",
                  "--ckpt-every", "100", "--keep-latent-stats"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kinema lora train", description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--model", default="shapes", help="model to adapt: built-in name or model folder")
    p.add_argument("--lora-rank", type=int, default=16, help="rank r of the adapter")
    p.add_argument("--lora-alpha", type=float, help="alpha; the update is scaled by alpha / rank (default: rank)")
    p.add_argument("--lora-targets", default=",".join(BLOCK_TARGETS),
                   help=f"Linear layers of each block to adapt, comma-separated (default: all of {BLOCK_TARGETS})")
    p.add_argument("-h", "--help", action="store_true")
    return p


def preset_args(model_dir: Path) -> list[str]:
    """The `kinema train` flags that build the model's DiT config (the loop builds its DiT from a preset and an
    attention mode): `--preset NAME`, plus `--attention MODE [--temporal-conv]` when the model's mode is not the
    preset's."""
    from kinema.dit.model import DiTConfig
    from kinema.train.dit import DIT_PRESETS, with_attention

    try:
        config = DiTConfig.from_dict(json.loads((model_dir / "model.json").read_text())["dit"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{model_dir} is not a kinema model folder: {e}") from None
    for name, preset in DIT_PRESETS.items():
        try:
            same = with_attention(preset, config.attention, config.temporal_conv) == config
        except ValueError:  # a preset too small for the model's attention mode
            same = False
        if same:
            mode = [] if config.attention == preset.attention else ["--attention", config.attention]
            return ["--preset", name, *mode, *(["--temporal-conv"] if config.temporal_conv else [])]
    raise ValueError(f"the DiT of {model_dir} matches none of kinema train's presets ({', '.join(DIT_PRESETS)})")


def parse_args(argv: list[str]) -> tuple[LoRAConfig, argparse.Namespace]:
    """(LoRA config, `kinema train` arguments) from `kinema lora train` flags."""
    from kinema.pipelines.loading import resolve_model_path
    from kinema.train import dit as train_dit

    own, rest = _parser().parse_known_args(argv)
    if own.help:
        _parser().print_help()
        train_dit.parse_args(["--help"])  # exits after printing the loop's flags
    alpha = own.lora_alpha if own.lora_alpha is not None else float(own.lora_rank)
    config = LoRAConfig(own.lora_rank, alpha, tuple(t for t in own.lora_targets.split(",") if t))
    model = resolve_model_path(own.model)
    base = ["--vae", str(model), "--init", str(model), *preset_args(model)]
    args = train_dit.parse_args(base + TRAIN_DEFAULTS + rest)
    if getattr(args, "nproc", 1) > 1:
        raise ValueError("kinema lora train runs in one process (--nproc 1)")
    args.lora = {"rank": config.rank, "alpha": config.alpha, "targets": list(config.targets),
                 "base_model": str(model)}
    return config, args


def lora_hooks(config: LoRAConfig, seed: int, base_model: str, extra_hooks=None):
    """The training loop's hooks: add the adapter and freeze the rest; write the adapter file and a merged model
    folder at each checkpoint. `extra_hooks.on_checkpoint` (optional) runs after them."""
    from kinema.train.dit import TrainHooks

    def prepare(dit) -> None:
        inject_lora(dit, config, ADAPTER, generator=torch.Generator().manual_seed(seed))
        params = train_only(dit, ADAPTER)
        log.info("LoRA rank %d alpha %g on %d layers: %d trainable parameters", config.rank, config.alpha,
                 len(params) // 2, sum(p.numel() for p in params))

    def on_checkpoint(out: Path, step: int, dit, ema) -> None:
        meta = {"base_model": base_model, "trained_steps": str(step)}
        save_lora(out / ADAPTER_FILE, ema.model, ADAPTER, config, meta)
        folded = fold_lora(copy.deepcopy(ema.model))
        atomic_save_safetensors(folded.state_dict(), out / "model" / "dit.safetensors")
        if extra_hooks is not None and extra_hooks.on_checkpoint is not None:
            extra_hooks.on_checkpoint(out, step, dit, ema)

    return TrainHooks(prepare=prepare, on_checkpoint=on_checkpoint)


def train(argv: list[str], extra_hooks=None) -> Path:
    """Run a LoRA fine-tune; returns the adapter file."""
    from kinema.train import dit as train_dit

    config, args = parse_args(argv)
    train_dit.train(args, lora_hooks(config, args.seed, args.lora["base_model"], extra_hooks))
    return Path(args.out) / ADAPTER_FILE


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "train":
        raise ValueError("usage: kinema lora train --model MODEL --out DIR [--data FOLDER] [--lora-rank R] ... "
                         "(kinema lora train --help)")
    from kinema.train.common import run_main

    return run_main(lambda a: a, lambda a: train(a), argv[1:])
