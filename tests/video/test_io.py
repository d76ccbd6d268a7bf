import numpy as np
import pytest

from kinema.video.io import Video, read_video, write_mp4


def _frames(t=9, h=32, w=48):
    rng = np.random.default_rng(0)
    base = np.zeros((t, h, w, 3), np.uint8) + 40
    for i in range(t):
        base[i, 8:20, 2 + 3 * i: 14 + 3 * i] = (220, 40, 40)
    return base + rng.integers(0, 3, base.shape, dtype=np.uint8)


@pytest.mark.parametrize("codec,name", [("h264", "h264"), ("h265", "hevc")])
def test_round_trip(tmp_path, codec, name):
    import av

    frames = _frames()
    path = write_mp4(tmp_path / "a.mp4", frames, fps=12, codec=codec, metadata={"prompt": "a red box", "seed": 7})
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.fps == 12
    assert np.abs(video.frames.astype(int) - frames).mean() < 4
    assert video.metadata["prompt"] == "a red box" and video.metadata["seed"] == "7"
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == name and s.format.name == "yuv420p"
        if codec == "h265":
            assert s.codec_tag == "hvc1"
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temp file left behind


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "b.mp4", _frames(), fps=8, codec="vp9")
    bad = np.zeros((3, 31, 31, 3), np.uint8)  # odd size: yuv420p cannot take it
    with pytest.raises(Exception):
        write_mp4(tmp_path / "c.mp4", bad, fps=8)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_video(tmp_path):
    p = tmp_path / "junk.mp4"
    p.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="cannot read"):
        read_video(p)


def test_tensor_round_trip():
    frames = _frames()
    v = Video(frames, 8)
    assert (Video.from_tensor(v.to_tensor()).frames == frames).all()
