"""Training the DiT from a video folder or a latent cache: one loop, the same losses, resumable, visible."""

import json
import logging

import pytest
import torch

import kinema
from kinema.cli import main as cli_main
from kinema.train import dit as train_dit
from tests.train.conftest import losses, train_argv


def _train(argv):
    threads = torch.get_num_threads()
    try:
        return train_dit.train(train_dit.parse_args(argv))
    finally:
        torch.set_num_threads(threads)  # --threads 1 must not slow the tests that follow


def test_folder_training_skips_the_corrupt_file_once_and_resumes_exactly(tmp_path, video_dir, tiny_model_dir,
                                                                         caplog):
    data = ["--data", str(video_dir), "--vae", str(tiny_model_dir)]
    with caplog.at_level(logging.WARNING):
        straight = _train(train_argv(tmp_path / "a", 4, *data))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "broken.mp4" in warned[0]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["data"]["skipped"] == 1
    assert summary["data"]["skipped_files"][0]["file"].endswith("broken.mp4")
    assert summary["args"]["data"] == str(video_dir) and summary["dit"]["dim"] == 24
    _train(train_argv(tmp_path / "b", 2, *data))
    resumed = _train(train_argv(tmp_path / "b", 4, *data, "--resume"))
    a, b = (torch.load(p, weights_only=False) for p in (straight, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["data"] == b["data"] and a["data"]["position"]["batch"] >= 1  # the data position is checkpointed
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_cache_training_matches_encoding_on_the_fly(tmp_path, video_dir, tiny_model_dir, tiny_cache):
    _train(train_argv(tmp_path / "fly", 3, "--data", str(video_dir), "--vae", str(tiny_model_dir)))
    _train(train_argv(tmp_path / "cached", 3, "--cache", str(tiny_cache)))  # the VAE comes from the cache
    torch.testing.assert_close(losses(tmp_path / "cached"), losses(tmp_path / "fly"), rtol=1e-3, atol=1e-4)
    pipe = kinema.load_pipeline(tmp_path / "cached" / "model")
    assert pipe.vae.latents_std.flatten().tolist() == [1.0] * 4


def test_gradient_accumulation_and_checkpointing_change_nothing_but_memory(tmp_path, tiny_cache):
    cache = ["--cache", str(tiny_cache)]
    _train(train_argv(tmp_path / "plain", 3, *cache))
    _train(train_argv(tmp_path / "accum", 3, *cache, "--grad-accum", "2", "--grad-checkpoint"))
    torch.testing.assert_close(losses(tmp_path / "accum"), losses(tmp_path / "plain"), rtol=1e-5, atol=1e-6)


def test_samples_progress_and_summary(tmp_path, tiny_cache):
    _train(train_argv(tmp_path / "r", 2, "--cache", str(tiny_cache), "--sample-every", "2", "--sample-steps", "1",
                      "--sample-prompt", "a box"))
    video = kinema.video.io.read_video(tmp_path / "r" / "samples" / "step0000002.mp4")
    assert video.frames.shape == (9, 32, 32, 3)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["precision"] == "fp32" and summary["processes"] == 1
    assert summary["steps_per_s"] > 0 and summary["data"]["clips"] == 6


@pytest.mark.parametrize("extra,message", [
    (["--data", "DATA"], "--vae is required"),
    (["--cache", "NOWHERE"], "not a latent cache"),
    (["--cache", "CACHE", "--grad-accum", "3"], "divisible"),
])
def test_bad_training_input_is_one_line(tmp_path, capsys, tiny_cache, video_dir, extra, message):
    extra = [str({"DATA": video_dir, "CACHE": tiny_cache}.get(x, x)) for x in extra]
    assert cli_main(["train", *train_argv(tmp_path / "r", 2, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
