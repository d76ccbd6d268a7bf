"""Two processes (torchrun, gloo, CPU) train exactly like one process with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

from kinema.train import dit as train_dit
from tests.train.conftest import losses, train_argv


def _torchrun(argv, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kinema.cli", "train", "--nproc", "2", *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    errors = "\n".join(line for line in done.stderr.splitlines() if "rror" in line or "xception" in line)
    assert done.returncode == 0, f"exit {done.returncode}; error lines:\n{errors[-4000:]}\n--- end:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_cache):
    out = tmp_path_factory.mktemp("one") / "run"
    threads = torch.get_num_threads()
    try:
        train_dit.train(train_dit.parse_args(train_argv(out, 4, "--cache", str(tiny_cache))))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one(tmp_path, tiny_cache, one_process, mode):
    out = tmp_path / mode
    _torchrun(train_argv(out, 4, "--cache", str(tiny_cache), *(["--fsdp"] if mode == "fsdp" else [])))
    torch.testing.assert_close(losses(out), losses(one_process), rtol=1e-5, atol=1e-6)
    a = torch.load(one_process / "checkpoint.pt", weights_only=False)
    b = torch.load(out / "checkpoint.pt", weights_only=False)
    assert b["world"] == 2 and len(b["rank_rng"]) == 2 and not torch.equal(*b["rank_rng"])  # per-rank seeds
    for k in a["model"]:  # FSDP checkpoints hold the whole (gathered) weights
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b["ema"][k], a["ema"][k], rtol=1e-4, atol=1e-6)
