import subprocess
import sys

import pytest

from kinema.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_an_h264_mp4(tiny_model_dir, tmp_path, capsys):
    import av

    out = tmp_path / "sub" / "clip.mp4"
    code, stdout, _ = _run(capsys, "generate", "a red circle moving right on a black background", "-o", str(out),
                           "--model", str(tiny_model_dir), "--seed", "5", "--fps", "10", "--quiet")
    assert code == 0 and out.exists() and "wrote" in stdout
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.average_rate == 10
        assert sum(1 for _ in c.decode(s)) == 9


@pytest.mark.parametrize("args,needle", [
    (["--frames", "10"], "1 + 4k"),
    (["--height", "40"], "multiples of 16"),
    (["--frames", "abc"], "whole number"),
    (["--guidance", "lots"], "expected a number"),
    (["--seed", "-3"], "seed"),
    (["--steps", "0"], "positive"),
    (["--model", "/no/such/model"], "neither a built-in model"),
    (["-o", "/proc/forbidden/x.mp4"], "cannot write"),
    (["-o", "out.avi"], "must end in"),
    (["--device", "cuda"], "CUDA"),
])
def test_bad_input_one_line_exit_2(tiny_model_dir, tmp_path, capsys, args, needle):
    base = ["generate", "a red circle", "--model", str(tiny_model_dir), "-o", str(tmp_path / "x.mp4")]
    if "--device" in args and __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    code, _, err = _run(capsys, *base, *args)
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("prompt,needle", [("", "empty"), ("   ", "empty"), ("x" * 3000, "characters")])
def test_bad_prompts(tiny_model_dir, tmp_path, capsys, prompt, needle):
    code, _, err = _run(capsys, "generate", prompt, "--model", str(tiny_model_dir), "-o", str(tmp_path / "x.mp4"))
    assert code == 2 and needle in err and err.count("\n") == 1


def test_unknown_command_and_missing_prompt(capsys):
    assert _run(capsys, "frobnicate")[0] == 2
    code, _, err = _run(capsys, "generate")
    assert code == 2 and "required" in err and err.count("\n") == 1


def test_console_entry_point_exit_code():
    r = subprocess.run([sys.executable, "-m", "kinema.cli", "generate", "x", "--frames", "6"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_generate_from_an_image(tiny_model_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    img = tmp_path / "first.png"
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(img)
    out = tmp_path / "i2v.mp4"
    code, _, _ = _run(capsys, "generate", "a red circle", "--image", str(img), "--last-image", str(img),
                      "--model", str(tiny_model_dir), "-o", str(out), "--quiet")
    assert code == 0 and out.exists()


def test_unreadable_image_is_refused(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "notimage.png"
    bad.write_text("hello")
    out = tmp_path / "x.mp4"
    code, _, err = _run(capsys, "generate", "a red circle", "--image", str(bad), "--model", str(tiny_model_dir),
                        "-o", str(out))
    assert code == 2 and "cannot read image" in err and err.count("\n") == 1 and not out.exists()


def test_save_latents_then_decode_gives_the_same_video(tiny_model_dir, tmp_path, capsys):
    from kinema.video.export import read_png_frames

    # PNG frames are lossless: two H.264 encodes of the same frames may differ (threaded x264 decisions)
    lat, a, b = tmp_path / "z.safetensors", tmp_path / "a", tmp_path / "b"
    assert _run(capsys, "generate", "a red circle", "--model", str(tiny_model_dir), "-o", f"{a}/",
                "--save-latents", str(lat), "--quiet")[0] == 0
    assert _run(capsys, "decode", str(lat), "-o", f"{b}/")[0] == 0  # the model is found from the file
    fa, fb = read_png_frames(a), read_png_frames(b)
    assert fa.shape == (9, 32, 32, 3) and (fa == fb).all()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    code, _, err = _run(capsys, "decode", str(bad), "-o", str(tmp_path / "c.mp4"))
    assert code == 2 and "cannot read latents" in err and not (tmp_path / "c.mp4").exists()


def test_experts_joins_a_model_and_a_low_noise_expert(tiny_model_dir, tmp_path, capsys):
    import torch

    from kinema.pipelines.loading import load_pipeline, save_model
    from kinema.pipelines.two_experts import TwoExpertPipeline

    pipe = load_pipeline(tiny_model_dir)
    low = save_model(tmp_path / "low", pipe.text_encoder.config, pipe.vae, pipe.dit, pipe.defaults, "low")
    out = tmp_path / "two"
    code, _, _ = _run(capsys, "experts", str(tiny_model_dir), str(low), "--boundary", "0.4", "-o", str(out),
                      "--dtype", "float16", "--guidance-2", "2.5")
    assert code == 0
    two = load_pipeline(out)
    assert isinstance(two, TwoExpertPipeline) and two.boundary == 0.4
    assert two.defaults.guidance_2 == 2.5 and two.defaults.guidance == pipe.defaults.guidance
    assert all(torch.equal(a, b.half().float()) for a, b in zip(two.dit_2.state_dict().values(),
                                                                 pipe.dit.state_dict().values()))
    code, _, err = _run(capsys, "experts", str(tiny_model_dir), str(low), "--boundary", "0.4", "-o", str(out))
    assert code == 2 and "already holds a model" in err          # never written over
    other = tmp_path / "other_vae"
    vae = load_pipeline(tiny_model_dir).vae
    torch.nn.init.normal_(next(vae.parameters()))
    save_model(other, pipe.text_encoder.config, vae, pipe.dit, pipe.defaults, "x")
    for bad, needle in ((["--boundary", "1.0"], "strictly between"), (["--boundary", "x"], "invalid float")):
        code, _, err = _run(capsys, "experts", str(tiny_model_dir), str(low), *bad, "-o", str(tmp_path / "n"))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "experts", str(tiny_model_dir), str(other), "--boundary", "0.5", "-o",
                        str(tmp_path / "m"))
    assert code == 2 and "do not share the VAE" in err
