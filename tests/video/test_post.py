import json

import numpy as np
import pytest
import torch

from kinema.video.io import Video
from kinema.video.lut import Lut3D, identity_lut, write_cube
from kinema.video.post import (
    MAX_UPSCALED_SIDE, PostSettings, adjust_brightness, adjust_contrast, adjust_saturation, adjust_temperature,
    check_upscale, interpolate_frames, luma, postprocess, sharpen, upscale,
)


def _frames(t=5, h=12, w=16, seed=0):
    return 0.1 + 0.8 * torch.rand(t, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _swap_lut() -> Lut3D:
    return Lut3D(identity_lut(9).table[..., [2, 0, 1]])


@pytest.mark.parametrize("fn,neutral", [(adjust_contrast, 1.0), (adjust_brightness, 1.0), (adjust_saturation, 1.0),
                                        (adjust_temperature, 0.0), (sharpen, 0.0)])
def test_neutral_values_are_the_identity(fn, neutral):
    x = _frames()
    assert torch.allclose(fn(x, neutral), x, atol=1e-6)


def test_directions():
    x = _frames()
    assert (adjust_contrast(x, 1.5) - 0.5).abs().mean() > (x - 0.5).abs().mean()
    assert (adjust_contrast(x, 0.5) - 0.5).abs().mean() < (x - 0.5).abs().mean()
    assert adjust_brightness(x, 1.2).mean() > x.mean() > adjust_brightness(x, 0.8).mean()
    chroma = lambda y: (y - luma(y)).abs().mean()  # noqa: E731
    assert chroma(adjust_saturation(x, 1.5)) > chroma(x) > chroma(adjust_saturation(x, 0.5))
    assert chroma(adjust_saturation(x, 0.0)) < 1e-6
    warm, cool = adjust_temperature(x, 0.5), adjust_temperature(x, -0.5)
    rb = lambda y: (y[..., 0] - y[..., 2]).mean()  # noqa: E731
    assert rb(warm) > rb(x) > rb(cool)
    assert torch.equal(warm[..., 1], x[..., 1])
    edge = torch.zeros(1, 8, 8, 3)
    edge[:, :, 4:] = 0.5
    sharp = sharpen(edge, 1.0, 1.0)
    assert sharp[0, 0, 4, 0] > 0.5 and sharp[0, 0, 3, 0] == 0  # overshoot on the bright side (dark side clamps)
    for y in (adjust_contrast(x, 4), adjust_brightness(x, 4), adjust_saturation(x, 4), sharpen(x, 5)):
        assert y.min() >= 0 and y.max() <= 1


def test_order_is_fixed(tmp_path):
    x = _frames()
    lut = _swap_lut()
    from kinema.video.lut import apply_lut

    # brightness then LUT != LUT then brightness, for a LUT that is not linear in the same way
    gamma = Lut3D(identity_lut(17).table ** 2)
    a = apply_lut(adjust_brightness(x, 1.3), gamma)
    b = adjust_brightness(apply_lut(x, gamma), 1.3)
    assert (a - b).abs().max() > 0.05
    path = write_cube(tmp_path / "gamma.cube", gamma)
    got = postprocess(x, PostSettings(brightness=1.3, lut=str(path)))
    assert (got - a).abs().max() < 2e-3  # the documented order: brightness before the LUT
    # the whole chain in the documented order
    s = PostSettings(contrast=1.2, brightness=0.9, saturation=1.3, temperature=0.3, lut="unused", sharpen=0.5)
    want = sharpen(apply_lut(adjust_temperature(adjust_saturation(adjust_brightness(adjust_contrast(
        x, 1.2), 0.9), 1.3), 0.3), lut), 0.5, 1.0)
    assert torch.allclose(postprocess(x, s, lut=lut), want, atol=1e-6)


def test_upscale_sizes_and_flat_frames():
    x = _frames(t=3, h=10, w=14)
    for method in ("lanczos", "bicubic"):
        assert upscale(x, 2, method).shape == (3, 20, 28, 3)
        assert upscale(x, 4, method).shape == (3, 40, 56, 3)
        flat = torch.full((2, 9, 11, 3), 0.37)
        assert (upscale(flat, 2, method) - 0.37).abs().max() < 1e-5
    assert torch.equal(upscale(x, 1), x)


def test_upscale_limit():
    check_upscale(1024, 512, 4)
    with pytest.raises(ValueError, match=f"limit is {MAX_UPSCALED_SIDE} px"):
        check_upscale(1040, 512, 4)
    with pytest.raises(ValueError, match="limit"):
        upscale(torch.zeros(1, 8, 2049, 3), 2)
    with pytest.raises(ValueError, match="one of"):
        check_upscale(8, 8, 3)


def test_interpolation_doubles_rate():
    x = _frames(t=5)
    y = interpolate_frames(x)
    assert y.shape[0] == 9 and torch.equal(y[0::2], x)
    assert torch.allclose(y[1], (x[0] + x[1]) / 2)
    v = postprocess(Video(np.zeros((5, 8, 8, 3), np.uint8), fps=8), PostSettings(interpolate=True))
    assert v.num_frames == 9 and v.fps == 16


def test_video_in_video_out():
    frames = (np.random.default_rng(0).random((3, 8, 10, 3)) * 255).astype(np.uint8)
    video = Video(frames, 12, {"prompt": "p"})
    assert postprocess(video, PostSettings()) is video  # identity: untouched
    assert np.array_equal(postprocess(video, PostSettings(lut=None, contrast=1.0, sharpen_radius=3)).frames, frames)
    out = postprocess(video, PostSettings(saturation=0.0, upscale=2))
    assert out.frames.shape == (3, 16, 20, 3) and out.frames.dtype == np.uint8 and out.fps == 12
    assert json.loads(out.metadata["post"])["upscale"] == 2 and out.metadata["prompt"] == "p"


@pytest.mark.parametrize("kw", [dict(contrast=-1), dict(brightness=5), dict(temperature=2), dict(sharpen=9),
                                dict(sharpen_radius=0), dict(upscale=3), dict(upscale_method="nearest"),
                                dict(saturation=float("nan"))])
def test_out_of_range_settings(kw):
    with pytest.raises(ValueError):
        PostSettings(**kw).validate()


def test_settings_dict_round_trip():
    s = PostSettings(contrast=1.1, lut="/x.cube", upscale=2, interpolate=True)
    assert PostSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="unknown"):
        PostSettings.from_dict({"gamma": 2})
    with pytest.raises(ValueError, match="wrong type"):
        PostSettings.from_dict({"upscale": "2"})
