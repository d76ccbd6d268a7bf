"""What a training run shows while it runs and leaves behind: progress bar (it/s, ETA), metrics JSONL, TensorBoard
(when installed), sample videos at intervals, and `summary.json` (resolved config, data counts, speed, last loss)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from kinema.atomic import temp_beside
from kinema.train.common import MetricsLog

log = logging.getLogger(__name__)


def add_args(p) -> None:
    g = p.add_argument_group("run visibility")
    g.add_argument("--log-every", type=int, default=50, help="log a line (loss, it/s, ETA) every N steps")
    g.add_argument("--sample-every", type=int, default=0, help="write a sample MP4 every N steps (0: never)")
    g.add_argument("--sample-prompt", help="prompt of the samples (default: the first caption of the data)")
    g.add_argument("--sample-steps", type=int, default=10, help="sampling steps of the samples")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def write_json(path: Path, obj: dict) -> None:
    """JSON written atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


class RunLog:
    """Rank 0's record of a run; on other ranks every method does nothing."""

    def __init__(self, out: Path, args, start_step: int, enabled: bool = True):
        self.enabled, self.out, self.start_step = enabled, out, start_step
        self.t0, self.losses = time.time(), []
        if not enabled:
            return
        self.metrics = MetricsLog(out / "metrics.jsonl", every=max(1, args.log_every),
                                  resume_step=start_step if args.resume else None, total=args.steps)
        self.tb = _tensorboard(out / "tensorboard")
        from tqdm import tqdm

        quiet = args.quiet or not sys.stderr.isatty()
        self.bar = tqdm(total=args.steps, initial=start_step, unit="step", disable=quiet, dynamic_ncols=True)

    def step(self, step: int, **metrics) -> None:
        self.losses.append(metrics.get("loss", float("nan")))
        if not self.enabled:
            return
        self.metrics.write(step, **metrics)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", refresh=False)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def summary(self, step: int, status: str, **info) -> dict:
        """Write `summary.json` (rank 0) and return it."""
        elapsed = time.time() - self.t0
        done = step - self.start_step
        tail = self.losses[-50:]
        out = {"status": status, "step": step, "steps_this_process": done, "wall_s": round(elapsed, 2),
               "steps_per_s": round(done / elapsed, 4) if elapsed > 0 else None,
               "last_loss_mean": sum(tail) / len(tail) if tail else None, **info}
        if self.enabled:
            write_json(self.out / "summary.json", out)
        return out

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            if self.tb is not None:
                self.tb.close()


@torch.no_grad()
def write_sample(path: Path, text_cfg, vae, dit, settings, prompt: str, device: torch.device) -> Path:
    """Generate one clip with the given (EMA) DiT through the text-to-video pipeline and save it as an MP4."""
    from kinema.pipelines.text_to_video import TextToVideoPipeline
    from kinema.text.encoder import TextEncoder

    was_training = dit.training
    pipe = TextToVideoPipeline(TextEncoder(text_cfg, device), vae.to(device), dit.eval(), settings, "sample", device)
    video = pipe(prompt, seed=0)
    dit.train(was_training)
    return video.save(path)
