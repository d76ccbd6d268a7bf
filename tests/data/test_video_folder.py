import logging

import numpy as np
import pytest
import torch

from kinema.data.buckets import BatchStream, DataPosition, epoch_batches, rank_slice
from kinema.data.video_folder import (MediaInfo, VideoDataConfig, VideoFolder, assign_bucket, clip_indices,
                                      parse_ratio, read_captions, resize_crop)
from tests.data.media import make_folder, moving_box, write_image, write_video


def test_folder_of_every_container_with_a_corrupt_and_a_truncated_file(tmp_path, caplog):
    make_folder(tmp_path, n=4)  # .mp4 .mov .mkv .webm + broken.mp4
    whole = write_video(tmp_path / "cut.mkv", moving_box(33, 32, 32))  # header readable, frames missing
    (tmp_path / "cut.txt").write_text("a cut file")
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        folder = VideoFolder(tmp_path, VideoDataConfig(frames=9, size=32))
    assert sorted(p.rsplit("/", 1)[1] for p, _ in folder.skipped)[0] == "broken.mp4"
    names = [m.path.rsplit("/", 1)[1] for m in folder.items]
    assert {"clip0.mp4", "clip1.mov", "clip2.mkv", "clip3.webm"} <= set(names)
    clips = [folder.try_load(i) for i in range(len(folder))]
    good = [c for c in clips if c is not None]
    assert len(good) == 4 and all(c.shape == (3, 9, 32, 32) for c in good)
    assert {p.rsplit("/", 1)[1] for p, _ in folder.skipped} == {"broken.mp4", "cut.mkv"}
    assert folder.try_load(names.index("cut.mkv")) is None  # a failed file is reported once
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in r.getMessage() for r in warnings)
    assert folder.summary()["skipped"] == 2


def test_decoded_clip_matches_the_frames_written(tmp_path):
    frames = moving_box(9, 32, 32)
    write_video(tmp_path / "a.mp4", frames)
    (tmp_path / "a.txt").write_text("a box")
    clip = VideoFolder(tmp_path, VideoDataConfig(frames=9, size=32)).load(0)
    expected = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)
    assert (clip - expected).abs().mean() < 0.03


def test_captions_from_metadata_jsonl_and_csv(tmp_path):
    write_video(tmp_path / "sub" / "a.webm", moving_box(5, 32, 32))
    write_image(tmp_path / "b.png", moving_box(1, 40, 24)[0])
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "sub/a.webm", "text": "a video"}\n'
                                             '{"file_name": "b.png", "caption": "an image"}\n')
    folder = VideoFolder(tmp_path, VideoDataConfig(frames=5, size=32))
    assert sorted(m.caption for m in folder.items) == ["a video", "an image"]
    image = [i for i, m in enumerate(folder.items) if m.caption == "an image"][0]
    assert folder.buckets[image] == (1, 32, 32) and folder.load(image).shape == (3, 1, 32, 32)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text('file_name,text\nsub/a.webm,"a, video"\n')
    assert read_captions(tmp_path) == {"sub/a.webm": "a, video"}
    (tmp_path / "metadata.csv").write_text("name,words\nx,y\n")
    with pytest.raises(ValueError, match="metadata row 1"):
        read_captions(tmp_path)


def test_nothing_usable_is_a_clear_error(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"junk")
    (tmp_path / "x.txt").write_text("junk")
    with pytest.raises(ValueError, match="no usable videos"):
        VideoFolder(tmp_path, VideoDataConfig(frames=5, size=32))


def test_buckets_by_aspect_ratio_and_length():
    cfg = VideoDataConfig(frames=17, size=64, aspect_ratios=(1.0, parse_ratio("16:9"), parse_ratio("9:16")),
                          fps=8)
    info = lambda w, h, fps, n: MediaInfo("x", "c", w, h, fps, n)  # noqa: E731
    assert assign_bucket(info(1920, 1080, 24, 120), cfg) == (17, 48, 80)   # 16:9, 5 s at 24 fps -> 17 at 8 fps
    assert assign_bucket(info(720, 1280, 30, 30), cfg) == (5, 80, 48)     # 1 s at 30 fps -> 8 frames -> 5
    assert assign_bucket(info(500, 480, 0, 1), cfg) == (1, 64, 64)        # an image
    assert assign_bucket(info(64, 64, 8, 3), VideoDataConfig(frame_buckets=(5, 17))) is None  # too short
    assert clip_indices(info(64, 64, 24, 100), 5, 8, 0.0) == [0, 3, 6, 9, 12]  # 24 -> 8 fps: every third frame
    assert clip_indices(info(64, 64, 8, 9), 5, None, 1.0) == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        VideoDataConfig(frames=8)
    with pytest.raises(ValueError, match="aspect ratio"):
        parse_ratio("wide")


def test_resize_covers_then_centre_crops():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 10:70] = 255  # white but for 10 columns at each side, which the crop removes
    out = resize_crop(frames, 16, 16)  # 40x80 -> 16x32 -> the middle 16 columns: all white
    assert out.shape == (3, 2, 16, 16) and out.min() > 0.9


def test_batches_are_per_bucket_cover_every_item_and_resume():
    keys = ["a"] * 5 + ["b"] * 2
    batches = epoch_batches(keys, 3, seed=0, epoch=0)
    assert all(len({keys[i] for i in b}) == 1 and len(b) == 3 for b in batches)
    assert set(sum(batches, [])) == set(range(7)) and len(batches) == 3
    assert epoch_batches(keys, 3, 0, 1) != batches
    stream = BatchStream(keys, 3, seed=0)
    seq = [stream.next() for _ in range(7)]  # crosses two epoch boundaries
    resumed = BatchStream(keys, 3, seed=0, position=DataPosition(1, 1))
    assert [resumed.next() for _ in range(3)] == seq[4:7]
    assert rank_slice(4, 1, 2) == slice(2, 4)
    with pytest.raises(ValueError, match="divisible"):
        rank_slice(3, 0, 2)
