"""`kinema generate --stream`: a causal model writes its frames chunk by chunk into one MP4."""

import json
from dataclasses import replace

import numpy as np
import pytest

from kinema.cli import main
from kinema.dit.model import DiT
from kinema.pipelines.loading import load_pipeline, save_model
from kinema.video.io import read_video


@pytest.fixture(scope="module")
def causal_model_dir(tiny_model_dir, tmp_path_factory):
    pipe = load_pipeline(tiny_model_dir)
    dit = DiT(replace(pipe.dit.config, attention="causal"))
    dit.load_state_dict(pipe.dit.state_dict())
    return save_model(tmp_path_factory.mktemp("causal") / "m", pipe.text_encoder.config, pipe.vae, dit,
                      pipe.defaults, name="tiny-causal")


def test_stream_writes_the_whole_video_and_its_sidecar(causal_model_dir, tmp_path, capsys):
    out = tmp_path / "long.mp4"
    code = main(["generate", "a red circle bouncing left and right", "--model", str(causal_model_dir), "--stream",
                 "--frames", "41", "--window", "2", "--steps", "2", "-o", str(out), "--contrast", "1.2"])
    stdout = capsys.readouterr().out
    assert code == 0 and "first frame after" in stdout and "41 frames" in stdout
    video = read_video(out)
    assert video.frames.shape[0] == 41 and abs(video.fps - 8) < 1e-6
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["output"]["frames"] == 41 and side["prompt"].startswith("a red circle")
    assert side["stream"] == {"chunk": 1, "window": 2, "colour_match": 1.0, "colour_method": "palette"}


def test_stream_equals_the_joint_video_when_the_model_is_causal(causal_model_dir, tmp_path, capsys):
    """Clean-past streaming without a window vs the same with a window covering the whole clip: same frames."""
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for path, window in ((a, "2"), (b, "8")):
        assert main(["generate", "a blue square", "--model", str(causal_model_dir), "--stream", "--frames", "9",
                     "--window", window, "--steps", "2", "--quiet", "-o", str(path)]) == 0
    fa, fb = read_video(a).frames.astype(int), read_video(b).frames.astype(int)
    assert np.abs(fa - fb).mean() < 2  # 9 frames = 3 latent frames: a window of 2 already holds all the past


@pytest.mark.parametrize("args, needle", [
    (["-o", "x.gif"], "writes an .mp4"),
    (["--interpolate"], "cannot interpolate"),
    (["--refine", "0.5"], "does not apply to --stream"),
])
def test_stream_refusals_are_one_line(causal_model_dir, tmp_path, capsys, args, needle):
    argv = ["generate", "a red circle", "--model", str(causal_model_dir), "--stream", "--steps", "1"]
    if "-o" not in args:
        argv += ["-o", str(tmp_path / "x.mp4")]
    code = main(argv + [a if a != "x.gif" else str(tmp_path / "x.gif") for a in args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


def test_stream_needs_a_causal_model(tiny_model_dir, tmp_path, capsys):
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--stream", "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code != 0 and "causal model" in err and "Traceback" not in err


def test_eval_streams_a_causal_model(causal_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left on a black background\na blue square growing on a gray background\n")
    code = main(["eval", "--model", str(causal_model_dir), "--prompts", str(prompts), "--seeds", "1", "--steps", "2",
                 "--stream"])
    out = capsys.readouterr().out
    assert code == 0 and "streamed" in out and "| seen | 2 |" in out
    code = main(["eval", "--model", str(causal_model_dir), "--image", "--seeds", "1", "--steps", "1", "--stream"])
    assert code == 2 and "text-to-video only" in capsys.readouterr().err


def test_stream_takes_the_continuation_guidance_after_the_models_clip(causal_model_dir, tmp_path):
    """--continue-guidance changes only the frames after the model's own 9, and the sidecar records it."""
    paths = [tmp_path / "guided.mp4", tmp_path / "cont.mp4"]
    for out, extra in zip(paths, ([], ["--continue-guidance", "1"])):
        assert main(["generate", "a red circle bouncing left and right", "--model", str(causal_model_dir), "--stream",
                     "--frames", "21", "--steps", "2", "--colour-match", "0", "--quiet", "-o", str(out), *extra]) == 0
    guided, cont = (read_video(p).frames.astype(int) for p in paths)
    assert np.abs(guided[:9] - cont[:9]).max() <= 3 < 8 < np.abs(guided[9:] - cont[9:]).max()  # H.264 rounding
    assert json.loads(paths[1].with_suffix(".json").read_text())["settings"]["continue_guidance"] == 1.0


def test_generate_refines_a_causal_model_and_records_it(causal_model_dir, tmp_path, capsys):
    out = tmp_path / "r.mp4"
    assert main(["generate", "a red circle", "--model", str(causal_model_dir), "--refine", "0.5", "--steps", "4",
                 "--quiet", "-o", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["refine"] == 0.5
    code = main(["generate", "a red circle", "--model", str(causal_model_dir), "--refine", "2", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "refine must be in [0, 1)" in err and "Traceback" not in err
