"""`kinema generate` end to end with post-processing, the output formats, the sidecar and --from (tiny model)."""

import json

import numpy as np
import pytest

from kinema.cli import main
from kinema.video.export import read_png_frames
from kinema.video.lut import identity_lut, write_cube


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sidecar_and_from_reproduce_the_frames(tiny_model_dir, tmp_path, capsys):
    lut = write_cube(tmp_path / "id.cube", identity_lut(17))
    first = f"{tmp_path}/a/"
    code, out, err = _run(capsys, "generate", "a red circle", "--model", str(tiny_model_dir), "-o", first,
                          "--seed", "4", "--contrast", "1.2", "--saturation", "1.3", "--lut", str(lut),
                          "--sharpen", "0.5", "--upscale", "2", "--upscale-method", "bicubic", "--quiet")
    assert code == 0, err
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["prompt"] == "a red circle" and side["seed"] == 4 and side["model"] == str(tiny_model_dir)
    assert side["settings"]["frames"] == 9 and side["post"]["lut"] == str(lut) and side["post"]["upscale"] == 2
    a = read_png_frames(tmp_path / "a")
    assert a.shape == (9, 64, 64, 3)

    code, _, err = _run(capsys, "generate", "--from", str(tmp_path / "a.json"), "-o", f"{tmp_path}/b/", "--quiet")
    assert code == 0, err
    assert np.array_equal(read_png_frames(tmp_path / "b"), a)
    b_side = json.loads((tmp_path / "b.json").read_text())
    assert {k: b_side[k] for k in ("prompt", "seed", "settings", "post")} == \
        {k: side[k] for k in ("prompt", "seed", "settings", "post")}

    code, _, err = _run(capsys, "generate", "--from", str(tmp_path / "a.json"), "-o", f"{tmp_path}/c/",
                        "--seed", "5", "--upscale", "1", "--quiet")  # explicit flags override the file
    c_side = json.loads((tmp_path / "c.json").read_text())
    assert code == 0 and c_side["seed"] == 5 and c_side["post"]["upscale"] == 1 and c_side["post"]["contrast"] == 1.2
    assert read_png_frames(tmp_path / "c").shape == (9, 32, 32, 3)


def test_h265_and_gif_with_interpolation(tiny_model_dir, tmp_path, capsys):
    import av
    from PIL import Image

    mp4 = tmp_path / "clip.mp4"
    code, _, err = _run(capsys, "generate", "a blue square", "--model", str(tiny_model_dir), "-o", str(mp4),
                        "--codec", "h265", "--fps", "6", "--interpolate", "--temperature", "0.4", "--quiet")
    assert code == 0, err
    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "hevc" and s.average_rate == 12
        assert sum(1 for _ in c.decode(s)) == 17
        assert json.loads(c.metadata["post"])["interpolate"] is True
    assert json.loads((tmp_path / "clip.json").read_text())["output"]["codec"] == "h265"

    gif = tmp_path / "clip.gif"
    code, _, err = _run(capsys, "generate", "--from", str(tmp_path / "clip.json"), "-o", str(gif), "--quiet")
    assert code == 0, err
    with Image.open(gif) as im:
        assert im.n_frames == 17 and im.size == (32, 32) and im.info["loop"] == 0


@pytest.mark.parametrize("extra,needle", [
    (["--lut", "{bad}"], "bad.cube:2: a data row needs 3 values"),
    (["--lut", "{missing}"], "cannot read LUT"),
    (["--height", "1040", "--upscale", "4"], "limit is 4096 px"),
    (["--upscale", "3"], "invalid choice"),
    (["--brightness", "9"], "brightness must be in"),
    (["-o", "{tmp}/x.webm"], "must end in .mp4 or .gif"),
    (["-o", "{tmp}/x.gif", "--codec", "h265"], "--codec applies to .mp4"),
    (["--from", "{missing}"], "cannot read run file"),
    (["--from", "{bad}"], "not valid JSON"),
    (["--from", "{badrun}"], "bad setting frames"),
])
def test_bad_inputs_one_line_exit_2_no_file(tiny_model_dir, tmp_path, capsys, extra, needle):
    (tmp_path / "bad.cube").write_text("LUT_3D_SIZE 2\n0 0\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "badrun.json").write_text(json.dumps({"kinema_run": 1, "prompt": "x", "settings": {"frames": "9"}}))
    names = {"bad": tmp_path / ("bad.cube" if "--lut" in extra else "bad.json"), "missing": tmp_path / "nope",
             "badrun": tmp_path / "badrun.json", "tmp": tmp_path}
    extra = [a.format(**names) for a in extra]
    before = set(tmp_path.iterdir())
    code, _, err = _run(capsys, "generate", "a red circle", "--model", str(tiny_model_dir),
                        *(["-o", str(tmp_path / "x.mp4")] if "-o" not in extra else []), *extra, "--quiet")
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert set(tmp_path.iterdir()) == before  # nothing written, no temp files


def test_prompt_required_without_from(capsys):
    code, _, err = _run(capsys, "generate", "-o", "x.mp4")
    assert code == 2 and "required" in err and err.count("\n") == 1
