"""A run killed with SIGKILL at random steps, and resumed each time, ends exactly like an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import torch

from kinema.train import dit as train_dit
from tests.train.conftest import losses, train_argv

STEPS = 30


def _run_until(argv, lines: int, metrics) -> bool:
    """Start a training process and SIGKILL it once metrics.jsonl has `lines` lines (or let it finish); returns
    whether it was killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kinema.train.dit", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    count = lambda: len(metrics.read_text().splitlines()) if metrics.exists() else 0  # noqa: E731
    lines, deadline = max(lines, count() + 1), time.time() + 120  # past the lines a previous run left
    while proc.poll() is None and time.time() < deadline:
        if count() >= lines:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-3000:]
    return proc.returncode == -signal.SIGKILL


def test_sigkill_at_random_steps_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_cache):
    argv = lambda out: train_argv(out, STEPS, "--cache", str(tiny_cache), "--ckpt-every", "1")  # noqa: E731
    threads = torch.get_num_threads()
    try:
        train_dit.train(train_dit.parse_args(argv(tmp_path / "straight")))
    finally:
        torch.set_num_threads(threads)
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    for target in sorted(rng.sample(range(2, STEPS - 2), 3)):
        kills += _run_until(argv(out) + ["--resume"], target, out / "metrics.jsonl")
        if (out / "checkpoint.pt").exists():  # a kill, even mid-write, never leaves a checkpoint that cannot load
            ck = torch.load(out / "checkpoint.pt", weights_only=False)
            assert ck["step"] <= STEPS and set(ck) >= {"model", "ema", "opt", "rng", "gen", "data", "args"}
    assert not _run_until(argv(out) + ["--resume"], STEPS + 1, out / "metrics.jsonl")
    assert kills == 3
    assert losses(out) == losses(tmp_path / "straight") and len(losses(out)) == STEPS
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (tmp_path / "straight", out))
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
