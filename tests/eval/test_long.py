import numpy as np
import pytest

from kinema.data.shapes import Scene, render_clip
from kinema.eval.judge import turn_points
from kinema.eval.long import judge_long_bounce, windows


def bounce(colour="red", shape="circle", frames=129, seed=0):
    scene = Scene(colour, shape, "bounce", "black")
    return render_clip(scene, np.random.default_rng(seed), frames, 64, 64).frames, scene


def test_windows_cover_the_clip():
    parts = windows(129)
    assert parts[0] == slice(0, 17) and parts[-1].stop == 129 and len(parts) == 8
    assert windows(17) == [slice(0, 17)]
    assert windows(40)[-1] == slice(23, 40)


@pytest.mark.parametrize("colour, shape, seed", [("red", "circle", 0), ("blue", "triangle", 1), ("yellow", "square", 2)])
def test_rendered_long_bounces_pass(colour, shape, seed):
    frames, scene = bounce(colour, shape, seed=seed)
    r = judge_long_bounce(frames, scene)
    assert r["pass"], r
    assert r["found"] == 1.0 and r["turns"] >= 2 and r["colour_drift"] < 2


def test_drift_a_wrong_colour_and_a_mid_frame_turn_fail():
    frames, scene = bounce()
    drifted = frames.astype(np.float32)
    obj = (np.abs(drifted - drifted[:, :1, :1]).sum(-1) > 60)[..., None]
    ramp = np.linspace(0, 30, len(frames))[:, None, None, None]
    drifted = np.where(obj, np.clip(drifted - ramp, 0, 255), drifted).astype(np.uint8)
    r = judge_long_bounce(drifted, scene)
    assert r["colour_drift"] > 8 and not r["pass"]
    assert not judge_long_bounce(frames, Scene("green", "circle", "bounce", "black"))["pass"]
    x = np.concatenate([np.linspace(10, 32, 20), np.linspace(32, 10, 20)])  # turns in the middle
    assert turn_points(x, 0.02 * 64) == [32.0]


def test_every_rendered_bounce_turns_at_the_edges_whatever_the_object_size():
    """Objects of 30-40 % of the frame touch the side with their centre 10-13 px in: all rendered bounces pass."""
    for seed in range(12):
        frames, scene = bounce(("red", "blue", "green")[seed % 3], ("circle", "square", "triangle")[seed % 3],
                               seed=100 + seed)
        r = judge_long_bounce(frames, scene)
        assert r["turns"] >= 2 and r["turns_at_edges"] == r["turns"], r


def test_a_rendered_bounce_that_turns_in_mid_frame_fails():
    from kinema.eval.judge import judge_clip

    frames, scene = bounce(frames=65, seed=3)
    x = judge_clip(frames).centres[:, 0]
    k = int(np.argmin(np.abs(x - 32)[:40]))  # a frame with the object in the middle
    turned = np.concatenate([frames[: k + 1], frames[k - 1::-1][:60]])  # back the way it came from there
    r = judge_long_bounce(turned, scene)
    assert r["turns"] >= 1 and r["turns_at_edges"] < r["turns"] and not r["pass"], r
