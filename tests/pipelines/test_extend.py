import numpy as np
import pytest

from kinema.pipelines.extend import cross_fade, extend_video
from kinema.pipelines.loading import load_pipeline
from kinema.video.io import Video


def _clip(t=9):
    rng = np.random.default_rng(0)
    return Video(rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8), fps=8)


def test_extend_keeps_the_input_and_reaches_the_length(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    src = _clip()
    out = extend_video(pipe, src, "a red circle moving right on a black background", frames=25, context=5)
    assert out.num_frames == 25 and (out.frames[:5] == src.frames[:5]).all()   # the last 4 fade into the join
    assert not (out.frames[5:9] == src.frames[5:9]).all() and out.metadata["blend"] == 4
    again = extend_video(pipe, src, "a red circle moving right on a black background", frames=25, context=5)
    assert (again.frames == out.frames).all()  # seeded
    kept = extend_video(pipe, src, "a red circle moving right on a black background", frames=25, context=5, blend=0)
    assert (kept.frames[:9] == src.frames).all()
    with pytest.raises(ValueError, match="blend"):
        extend_video(pipe, src, "x", frames=25, blend=-1)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        extend_video(pipe, src, "x", frames=24)
    with pytest.raises(ValueError, match="context"):
        extend_video(pipe, src, "x", frames=25, context=4)


def test_extend_cli_refuses_a_corrupt_video(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main

    bad = tmp_path / "in.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    out = tmp_path / "out.mp4"
    code = main(["extend", str(bad), "a red circle", "--frames", "33", "--model", str(tiny_model_dir),
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read video" in err and err.count("\n") == 1 and not out.exists()


def test_extend_cli_end_to_end(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main
    from kinema.video.io import read_video

    src = tmp_path / "in.mp4"
    _clip().save(src)
    out = tmp_path / "long.mp4"
    code = main(["extend", str(src), "a red circle", "--frames", "17", "--model", str(tiny_model_dir), "-o", str(out),
                 "--steps", "2", "--quiet", "--blend", "2"])
    assert code == 0 and read_video(out).num_frames == 17 and (tmp_path / "long.json").exists()
    assert '"blend": 2' in (tmp_path / "long.json").read_text()
    assert '"colour_method": "histogram"' in (tmp_path / "long.json").read_text()
    code = main(["extend", str(src), "a red circle", "--frames", "17", "--model", str(tiny_model_dir), "-o", str(out),
                 "--steps", "2", "--quiet", "--colour-method", "palette"])
    assert code == 0 and '"colour_method": "palette"' in (tmp_path / "long.json").read_text()
    code = main(["extend", str(src), "a red circle", "--frames", "17", "--model", str(tiny_model_dir), "-o", str(out),
                 "--colour-method", "lut"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid choice" in err and "Traceback" not in err
    code = main(["extend", str(src), "a red circle", "--frames", "17", "--model", str(tiny_model_dir), "-o", str(out),
                 "--blend", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "0 or more" in err and err.count("\n") == 1
    code = main(["extend", str(src), "a red circle", "--frames", "17", "--model", str(tiny_model_dir), "-o", str(out),
                 "--colour-match", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "strength in [0, 1]" in err and err.count("\n") == 1


def test_cross_fade_walks_to_the_reconstruction_in_equal_steps():
    own, recon = np.zeros((4, 2, 2, 3), np.uint8), np.full((4, 2, 2, 3), 100, np.uint8)
    assert cross_fade(own, recon)[:, 0, 0, 0].tolist() == [20, 40, 60, 80]   # then the join: a decoded frame (100)
    assert (cross_fade(recon, recon) == recon).all()
