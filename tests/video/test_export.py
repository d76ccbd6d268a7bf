import json

import numpy as np
import pytest

from kinema.video.export import (
    output_kind, read_png_frames, read_run, save_output, sidecar_path, write_gif, write_png_frames,
)
from kinema.video.io import Video, read_video


def _video(t=6, h=16, w=24, fps=10):
    frames = np.zeros((t, h, w, 3), np.uint8) + 30
    for i in range(t):
        frames[i, 4:12, 2 + 3 * i: 8 + 3 * i] = (220, 60, 40)
    return Video(frames, fps, {"prompt": "a red box", "seed": 3, "model": "tiny"})


def test_output_kind_and_sidecar():
    assert output_kind("a/b.mp4") == "mp4" and output_kind("B.GIF") == "gif" and output_kind("frames/") == "frames"
    assert sidecar_path("x/out.mp4").name == "out.json" and sidecar_path("x/run.v2/").name == "run.v2.json"
    with pytest.raises(ValueError, match="must end in"):
        output_kind("out.avi")


@pytest.mark.parametrize("codec,name", [("h264", "h264"), ("h265", "hevc")])
def test_mp4_decodes_with_metadata_and_sidecar(tmp_path, codec, name):
    import av

    v = _video()
    run = {"prompt": "a red box", "seed": 3, "post": {"contrast": 1.2}}
    save_output(v, tmp_path / "clip.mp4", codec=codec, crf=20, run=run)
    back = read_video(tmp_path / "clip.mp4")
    assert back.num_frames == 6 and back.fps == 10 and back.metadata["prompt"] == "a red box"
    assert back.metadata["seed"] == "3"
    with av.open(str(tmp_path / "clip.mp4")) as c:
        assert c.streams.video[0].codec_context.name == name
    side = json.loads((tmp_path / "clip.json").read_text())
    assert side["post"] == {"contrast": 1.2} and side["output"]["codec"] == codec and side["output"]["crf"] == 20
    assert side["output"]["frames"] == 6 and side["output"]["fps"] == 10
    assert read_run(tmp_path / "clip.json")["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4"]


def test_gif_round_trip(tmp_path):
    from PIL import Image, ImageSequence

    v = _video(fps=10)
    save_output(v, tmp_path / "a.gif")
    with Image.open(tmp_path / "a.gif") as im:
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
        assert im.info["loop"] == 0 and im.info["duration"] == 100
    assert len(frames) == 6 and frames[0].size == (24, 16)
    assert np.abs(np.asarray(frames[2]).astype(int) - v.frames[2]).mean() < 3
    assert json.loads((tmp_path / "a.json").read_text())["output"]["format"] == "gif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.json"]


def test_png_frames_round_trip_and_replace(tmp_path):
    v = _video()
    save_output(v, f"{tmp_path}/frames/")
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(6)]
    assert np.array_equal(read_png_frames(tmp_path / "frames"), v.frames)  # PNG is lossless
    assert json.loads((tmp_path / "frames.json").read_text())["output"]["format"] == "frames"
    write_png_frames(tmp_path / "frames", v.frames[:3])  # a frames folder is replaced whole
    assert len(list((tmp_path / "frames").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "frames.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds more than PNG frames"):
        write_png_frames(tmp_path / "mine", v.frames)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_failed_writes_leave_nothing(tmp_path):
    odd = Video(np.zeros((3, 31, 31, 3), np.uint8), 8)  # yuv420p cannot take an odd size
    with pytest.raises(Exception):
        save_output(odd, tmp_path / "x.mp4", run={"prompt": "p"})
    with pytest.raises(ValueError, match="codec"):
        save_output(_video(), tmp_path / "y.mp4", codec="vp9")
    bad = Video(np.zeros((2, 8, 8, 5), np.uint8), 8)  # 5 channels: neither PIL nor PyAV takes it
    with pytest.raises(Exception):
        save_output(bad, tmp_path / "z.gif")
    with pytest.raises(Exception):
        save_output(bad, f"{tmp_path}/frames/")
    with pytest.raises(Exception):
        write_gif(tmp_path / "w.gif", bad.frames, 8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text,needle", [(None, "cannot read run file"), ("{nope", "not valid JSON"),
                                         ('{"prompt": "x"}', "not a kinema run"),
                                         ('{"kinema_run": 1, "settings": 3}', "'settings' must be dict")])
def test_bad_run_files(tmp_path, text, needle):
    path = tmp_path / "run.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=needle):
        read_run(path)
