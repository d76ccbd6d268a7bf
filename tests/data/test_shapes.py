import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinema.data.shapes import (BACKGROUNDS, COLOURS, HELD_OUT, MOTIONS, Scene, all_scenes, parse_canonical,
                                random_caption, random_training_clip, render_clip)


def test_held_out_pairs_are_never_drawn_for_training():
    rng = np.random.default_rng(0)
    pairs = {(c.scene.colour, c.scene.shape) for c in (random_training_clip(rng, 1, 16, 16) for _ in range(3000))}
    assert not pairs & HELD_OUT
    assert len(pairs) == 8 * 3 - 3  # every other pair does appear
    assert all(not s.held_out for s in all_scenes(held_out=False))
    assert len(all_scenes(held_out=True)) == 3 * 8 * 3


def test_white_on_white_is_refused():
    with pytest.raises(ValueError):
        Scene("white", "circle", "still", "white")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), motion=st.sampled_from(MOTIONS), k=st.integers(0, 8),
       h=st.sampled_from([16, 32, 64, 96]), w=st.sampled_from([16, 48, 64, 128]))
def test_object_inside_frame_and_sizes(seed, motion, k, h, w):
    rng = np.random.default_rng(seed)
    clip = render_clip(Scene("red", "square", motion, "black"), rng, 1 + 4 * k, h, w)
    assert clip.frames.shape == (1 + 4 * k, h, w, 3) and clip.frames.dtype == np.uint8
    half = clip.sizes / 2
    assert (clip.centres[:, 0] - half >= -1e-3).all() and (clip.centres[:, 0] + half <= w + 1e-3).all()
    assert (clip.centres[:, 1] - half >= -1e-3).all() and (clip.centres[:, 1] + half <= h + 1e-3).all()
    s = min(h, w)
    assert 0.6 * 0.30 * s - 1e-3 <= clip.sizes.min() and clip.sizes.max() <= 1.8 * 0.40 * s + 1e-3


def test_colours_geometry_and_motions():
    rng = np.random.default_rng(1)
    for shape, ratio in (("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)):
        clip = render_clip(Scene("blue", shape, "still", "gray"), rng)
        assert abs(clip.coverage[0].sum() / clip.sizes[0] ** 2 - ratio) < 0.02
        assert tuple(clip.frames[0, 0, 0]) == BACKGROUNDS["gray"]
        core = clip.frames[0][clip.coverage[0] == 1]
        assert (core == COLOURS["blue"]).all()
    moves = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
    for motion, (axis, sign) in moves.items():
        c = render_clip(Scene("red", "circle", motion, "black"), rng)
        travel = (c.centres[-1, axis] - c.centres[0, axis]) * sign
        assert 0.35 * 64 - 1e-3 <= travel <= 0.55 * 64 + 1e-3
        assert c.centres[:, 1 - axis].std() < 1e-4
    grow = render_clip(Scene("red", "circle", "grow", "black"), rng)
    assert abs(grow.sizes[-1] / grow.sizes[0] - 3.0) < 1e-3 and grow.centres.std(axis=0).max() < 1e-4


def test_triangle_apex_up():
    clip = render_clip(Scene("red", "triangle", "still", "black"), np.random.default_rng(2))
    rows = clip.coverage[0].sum(axis=1)
    filled = np.nonzero(rows)[0]
    assert rows[filled[0]] < rows[filled[-1]]  # narrow at the top, wide at the bottom


def test_bounce_reflects_at_the_edges():
    rng = np.random.default_rng(3)
    turned = 0
    for _ in range(50):
        c = render_clip(Scene("red", "circle", "bounce", "black"), rng, frames=65)
        x, half = c.centres[:, 0], c.sizes[0] / 2
        assert x.min() >= half - 1e-3 and x.max() <= 64 - half + 1e-3
        steps = np.diff(x)
        turned += int((np.sign(steps[1:]) != np.sign(steps[:-1])).any())
        assert np.abs(steps).max() <= 0.55 * 64 / 16 + 1e-3 and c.centres[:, 1].std() < 1e-4
    assert turned == 50  # 65 frames always cover at least one reflection


def test_captions_vary_and_canonical_parses():
    rng = np.random.default_rng(4)
    scene = Scene("orange", "triangle", "bounce", "white")
    captions = {random_caption(scene, rng) for _ in range(200)}
    assert len(captions) > 20
    assert parse_canonical(scene.canonical_caption()) == scene
    assert parse_canonical("a red circle dancing on a black background") is None
    assert parse_canonical("hello") is None


def test_bad_sizes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        render_clip(Scene("red", "circle", "still", "black"), rng, frames=6)
    with pytest.raises(ValueError):
        render_clip(Scene("red", "circle", "still", "black"), rng, height=50)


def test_extra_colours_are_drawn_only_when_asked():
    from kinema.data.shapes import EXTRA_COLOURS

    rng = np.random.default_rng(3)
    default = {random_training_clip(rng, 1, 16, 16).scene.colour for _ in range(500)}
    assert default == set(COLOURS)  # pink is never in the default training data
    pink = [random_training_clip(rng, 5, 32, 32, colours=("pink",)) for _ in range(20)]
    assert {c.scene.colour for c in pink} == {"pink"} and all("pink" in c.caption for c in pink)
    core = pink[0].frames[0][pink[0].coverage[0] > 0.999]
    assert (core == EXTRA_COLOURS["pink"]).all() and EXTRA_COLOURS["pink"] == (240, 110, 180)
    assert parse_canonical("a pink circle growing on a gray background") == Scene("pink", "circle", "grow", "gray")
    with pytest.raises(ValueError, match="unknown colours"):
        random_training_clip(rng, colours=("magenta",))
