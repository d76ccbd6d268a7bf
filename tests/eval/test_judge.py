"""The shapes-world judge reads ground-truth and degraded clips correctly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kinema.data.shapes import BACKGROUNDS, COLOURS, MOTIONS, Scene, all_scenes, render_clip
from kinema.eval.judge import Judgement, consistency, judge_clip, motion_matches


def _correct(j: Judgement, scene: Scene) -> bool:
    return (j.colour == scene.colour and j.shape == scene.shape and j.background == scene.background
            and motion_matches(scene.motion, j.motion))


def _accuracy(scenes, rng, degrade=None, frames=17, height=64, width=64) -> float:
    hits = 0
    for scene in scenes:
        clip = render_clip(scene, rng, frames, height, width).frames
        if degrade is not None:
            clip = np.clip(np.rint(degrade(clip.astype(np.float32), rng)), 0, 255).astype(np.uint8)
        hits += _correct(judge_clip(clip), scene)
    return hits / len(scenes)


def _blur(f, rng):
    return ndimage.gaussian_filter(f, (0, 1.0, 1.0, 0))


def _noise(f, rng):
    return f + rng.normal(0.0, 6.0, f.shape)


def _shift(f, rng):
    return f + rng.uniform(-10.0, 10.0, 3)


def test_ground_truth_every_scene():
    rng = np.random.default_rng(0)
    scenes = all_scenes()
    hits, centre_err, size_err, inside = 0, [], [], True
    for scene in scenes:
        clip = render_clip(scene, rng)
        j = judge_clip(clip.frames)
        hits += _correct(j, scene)
        centre_err.append(np.abs(j.centres - clip.centres).max())
        size_err.append(np.abs(j.sizes - clip.sizes).max())
        inside &= bool(j.inside.all() and j.found.all())
    assert hits / len(scenes) >= 0.99
    assert inside
    assert np.median(centre_err) < 0.3 and max(centre_err) < 1.0
    assert np.median(size_err) < 0.6 and max(size_err) < 1.5


@pytest.mark.parametrize("degrade", [_blur, _noise, _shift, lambda f, rng: _shift(_noise(_blur(f, rng), rng), rng)],
                         ids=["blur", "noise", "shift", "all"])
def test_degraded_clips(degrade):
    rng = np.random.default_rng(1)
    scenes = all_scenes()[::11]  # 51 scenes, every colour, shape, motion and background
    assert _accuracy(scenes, rng, degrade) >= 0.95


@pytest.mark.parametrize("frames,height,width,stride", [(17, 32, 32, 11), (17, 96, 128, 23), (17, 128, 96, 23),
                                                        (5, 64, 64, 11), (33, 64, 64, 17)])
def test_other_sizes_and_lengths(frames, height, width, stride):
    rng = np.random.default_rng(2)
    assert _accuracy(all_scenes()[3::stride], rng, None, frames, height, width) >= 0.95


def test_missing_object():
    rng = np.random.default_rng(3)
    frames = np.broadcast_to(np.asarray(BACKGROUNDS["gray"], np.float32), (17, 64, 64, 3))
    frames = np.clip(np.rint(frames + rng.normal(0, 6, frames.shape)), 0, 255).astype(np.uint8)
    j = judge_clip(frames)
    assert j.colour is None and j.shape is None and j.motion is None
    assert j.background == "gray"
    assert not j.found.any() and not j.inside.any()
    assert np.isnan(j.centres).all() and np.isnan(j.sizes).all()
    figures = consistency(j, frames)
    assert figures["found_fraction"] == 0.0 and np.isnan(figures["colour_drift"])


def test_bounce_with_reflection_is_bounce():
    rng = np.random.default_rng(4)
    seen = 0
    for i in range(80):
        scene = Scene(list(COLOURS)[i % 7], ("circle", "square", "triangle")[i % 3], "bounce",
                      ("black", "gray", "white")[i % 3])
        clip = render_clip(scene, rng)
        x = clip.centres[:, 0]
        steps = np.diff(x)
        turn = np.flatnonzero(np.sign(steps[1:]) != np.sign(steps[:-1])) + 1
        # A reflection with at least two frames' worth of travel on each side.
        if len(turn) and min(abs(x[turn[0]] - x[0]), abs(x[-1] - x[turn[0]])) >= 2 * np.abs(steps).max():
            seen += 1
            assert judge_clip(clip.frames).motion == "bounce"
    assert seen >= 10


def test_motion_words_and_matching():
    assert motion_matches("bounce", "bounce") and motion_matches("bounce", "left") and motion_matches("bounce", "right")
    assert not motion_matches("bounce", "up") and not motion_matches("bounce", None)
    assert motion_matches("grow", "grow") and not motion_matches("left", "bounce") and not motion_matches("still", None)
    rng = np.random.default_rng(5)
    for motion in MOTIONS:
        if motion == "bounce":
            continue
        j = judge_clip(render_clip(Scene("red", "square", motion, "black"), rng).frames)
        assert j.motion == motion
    # "up" is towards the top of the picture: centres' y decreases.
    j = judge_clip(render_clip(Scene("blue", "circle", "up", "white"), rng).frames)
    assert j.centres[-1, 1] < j.centres[0, 1]


def test_second_faint_blob_and_flicker():
    rng = np.random.default_rng(6)
    scene = Scene("green", "triangle", "right", "gray")
    clip = render_clip(scene, rng)
    f = clip.frames.astype(np.float32)
    bg = np.asarray(BACKGROUNDS["gray"], np.float32)
    ghost = np.zeros(f.shape[:3], np.float32)
    ghost[:, 48:60, 4:20] = 0.3  # a faint blob, larger than nothing, of another colour
    f = f + ghost[..., None] * (np.asarray(COLOURS["purple"], np.float32) - bg)
    f = f + rng.uniform(-6, 6, (len(f), 1, 1, 1))  # whole-frame brightness flicker
    frames = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    j = judge_clip(frames)
    assert _correct(j, scene)
    assert consistency(j, frames)["background_flicker"] > consistency(judge_clip(clip.frames), clip.frames)[
        "background_flicker"] + 1.0


def test_consistency_on_ground_truth():
    rng = np.random.default_rng(7)
    clip = render_clip(Scene("orange", "square", "right", "black"), rng)
    j = judge_clip(clip.frames)
    c = consistency(j, clip.frames)
    assert set(c) == {"background_flicker", "colour_stability", "size_stability", "path_straightness",
                      "found_fraction", "colour_drift"}
    assert c["background_flicker"] == 0.0 and c["found_fraction"] == 1.0
    assert c["colour_stability"] < 1.0 and c["colour_drift"] < 1.0 and c["size_stability"] < 0.02
    assert c["path_straightness"] > 0.99
    still = render_clip(Scene("orange", "square", "still", "black"), rng)
    assert np.isnan(consistency(judge_clip(still.frames), still.frames)["path_straightness"])
    # A colour that drifts over the clip shows up as drift and instability.
    f = clip.frames.astype(np.float32)
    f += np.linspace(0, 40, len(f))[:, None, None, None] * clip.coverage[..., None] * np.array([-1.0, 1.0, 0.0])
    drifting = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    c = consistency(judge_clip(drifting), drifting)
    assert c["colour_drift"] > 30 and c["colour_stability"] > 8


def test_inside_flags_a_cut_object():
    frame = np.zeros((1, 64, 64, 3), np.uint8) + 10
    frame[0, 20:40, :12] = COLOURS["red"]  # a 20-px square with 8 px cut off by the left border
    assert not judge_clip(frame).inside[0]
    frame = np.zeros((1, 64, 64, 3), np.uint8) + 10
    frame[0, 20:40, :20] = COLOURS["red"]  # touching the border, not cut
    j = judge_clip(frame)
    assert j.inside[0] and j.shape == "square" and j.motion is None


def test_single_frame_and_bad_input():
    rng = np.random.default_rng(8)
    j = judge_clip(render_clip(Scene("yellow", "circle", "still", "white"), rng, 1).frames)
    assert (j.colour, j.shape, j.background, j.motion) == ("yellow", "circle", "white", None)
    with pytest.raises(ValueError):
        judge_clip(np.zeros((64, 64, 3), np.uint8))


def test_the_judge_answers_an_extra_colour_only_when_told():
    from kinema.data.shapes import EXTRA_COLOURS

    clip = render_clip(Scene("pink", "square", "still", "gray"), np.random.default_rng(0), 9, 32, 32)
    assert judge_clip(clip.frames).colour is None  # pink is far from every vocabulary colour
    assert judge_clip(clip.frames, EXTRA_COLOURS).colour == "pink"
    red = render_clip(Scene("red", "square", "still", "gray"), np.random.default_rng(0), 9, 32, 32)
    assert judge_clip(red.frames, EXTRA_COLOURS).colour == "red"
