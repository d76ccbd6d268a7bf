import numpy as np
import pytest

from kinema.data.shapes import Scene, render_clip
from kinema.eval.judge import judge_clip
from kinema.video.colour_match import (METHODS, ColourReference, colour_match, histogram_match, palette,
                                       palette_match)


def _clip(seed=0, colour="blue", background="white", frames=17):
    return render_clip(Scene(colour, "triangle", "bounce", background), np.random.default_rng(seed), frames)


@pytest.mark.parametrize("method", METHODS)
def test_frames_matched_to_themselves_are_unchanged(method):
    frames = _clip().frames
    for f in frames[::4]:
        assert np.abs(colour_match(f[None], f[None], method=method).astype(int) - f).max() <= 1
    pooled = np.abs(colour_match(frames, frames, method=method).astype(int) - frames)    # each frame against all
    assert pooled.mean() < 0.2 and pooled.max() <= 25                                 # only edge pixels move


@pytest.mark.parametrize("method", METHODS)
def test_a_colour_drift_is_undone(method):
    clip = _clip()
    drifted = np.clip(clip.frames.astype(int) + clip.coverage[..., None] * np.array([-25, 15, 10]), 0, 255)
    fixed = colour_match(drifted.astype(np.uint8), clip.frames[:5], method=method)
    core = clip.coverage > 0.99                                                      # the object's inside
    assert np.abs(drifted[core].mean(0) - clip.frames[core].mean(0)).max() > 14
    assert np.abs(fixed[core].astype(float).mean(0) - clip.frames[core].mean(0)).max() < 2
    background = np.abs(fixed[clip.coverage == 0].astype(int) - clip.frames[clip.coverage == 0])
    assert background.max() <= (0 if method == "histogram" else 2)                  # the background stays


@pytest.mark.parametrize("colour, background", [("orange", "white"), ("red", "gray"), ("blue", "black")])
def test_the_palette_match_keeps_edge_coverage_where_the_histogram_match_redraws_it(colour, background):
    """After a drift of the object's colour, each edge pixel should stay the same blend of the (matched) object and
    background colours: the affine map keeps it (up to rounding), per-channel histogram matching does not."""
    clip = render_clip(Scene(colour, "triangle", "bounce", background), np.random.default_rng(3), 17)
    drifted = np.clip(clip.frames.astype(int) + clip.coverage[..., None] * np.array([-12, 20, 30]), 0, 255)
    edge = (clip.coverage > 0.01) & (clip.coverage < 0.99)
    error = {}
    for method in METHODS:
        out = colour_match(drifted.astype(np.uint8), clip.frames[:5], method=method).astype(float)
        fg, bg = out[clip.coverage > 0.99].mean(0), out[clip.coverage == 0].mean(0)
        alpha = ((out - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))                  # (T, H, W) coverage read back
        error[method] = np.abs(alpha - clip.coverage)[edge].mean()
    assert error["palette"] < 0.015 and error["histogram"] > 2 * error["palette"]


@pytest.mark.parametrize("method", METHODS)
def test_flat_frames_stay_flat_and_strength_blends(method):
    flat = np.full((2, 8, 8, 3), 100, np.uint8)
    ref = np.full((1, 8, 8, 3), 140, np.uint8)
    assert (colour_match(flat, ref, method=method) == 140).all()
    assert (colour_match(flat, ref, 0.5, method) == 120).all() and (colour_match(flat, ref, 0.0, method) == 100).all()


def test_shades_of_one_colour_are_one_palette_colour_and_its_mean_is_matched():
    rng = np.random.default_rng(0)
    reference = np.clip(rng.normal((200, 60, 120), 10, (4, 16, 16, 3)), 0, 255).astype(np.uint8)
    frames = np.clip(rng.normal((150, 90, 100), 20, (3, 16, 16, 3)), 0, 255).astype(np.uint8)
    assert len(palette(reference)) == 1
    out = palette_match(frames, reference).reshape(-1, 3).astype(float)
    assert np.abs(out.mean(0) - reference.reshape(-1, 3).mean(0)).max() < 1.5


def test_a_reference_serves_many_matches_as_one_call_does():
    clip = _clip(frames=33)
    ref = ColourReference(clip.frames[:17])
    assert np.array_equal(ref.match(clip.frames[17:]), palette_match(clip.frames[17:], clip.frames[:17]))


def test_bad_input_is_refused():
    frames = _clip().frames
    with pytest.raises(ValueError, match="uint8"):
        histogram_match(frames.astype(np.float32), frames)
    with pytest.raises(ValueError, match="strength"):
        palette_match(frames, frames, 1.5)
    with pytest.raises(ValueError, match="method"):
        colour_match(frames, frames, method="lut")
