"""Fixtures of the data-training tests: a folder of real-format videos (one corrupt) and its latent cache."""

import pytest

import kinema
from kinema.data.latent_cache import build_cache
from kinema.data.video_folder import VideoDataConfig
from tests.data.media import make_folder


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    """6 captioned 9-frame 32x32 clips (.mp4 .mov .mkv .webm) and broken.mp4."""
    return make_folder(tmp_path_factory.mktemp("videos"), n=6)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, video_dir, tiny_model_dir):
    out = tmp_path_factory.mktemp("cache") / "c"
    build_cache(video_dir, kinema.load_pipeline(tiny_model_dir), out, VideoDataConfig(frames=9, size=32),
                shard_size=4)
    return out


def train_argv(out, steps, *extra):
    """A tiny DiT run: 9 frames at 32x32, batch 2, checkpoint every 2 steps, one thread."""
    return ["--out", str(out), "--preset", "tiny", "--frames", "9", "--size", "32", "--steps", str(steps),
            "--batch", "2", "--warmup", "1", "--ckpt-every", "2", "--threads", "1", "--quiet", *extra]


def losses(run_dir):
    import json

    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
