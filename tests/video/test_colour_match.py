import numpy as np
import pytest

from kinema.data.shapes import Scene, render_clip
from kinema.video.colour_match import histogram_match


def _clip(seed=0, colour="blue", background="white"):
    return render_clip(Scene(colour, "triangle", "bounce", background), np.random.default_rng(seed), 17)


def test_frames_matched_to_themselves_are_unchanged():
    frames = _clip().frames
    for f in frames[::4]:
        assert np.abs(histogram_match(f[None], f[None]).astype(int) - f).max() <= 1
    pooled = np.abs(histogram_match(frames, frames).astype(int) - frames)            # each frame against all
    assert pooled.mean() < 0.2 and pooled.max() <= 25                                 # only edge pixels move


def test_a_colour_drift_is_undone():
    clip = _clip()
    drifted = np.clip(clip.frames.astype(int) + clip.coverage[..., None] * np.array([-25, 15, 10]), 0, 255)
    fixed = histogram_match(drifted.astype(np.uint8), clip.frames[:5])
    core = clip.coverage > 0.99                                                      # the object's inside
    assert np.abs(drifted[core].mean(0) - clip.frames[core].mean(0)).max() > 14
    assert np.abs(fixed[core].astype(float).mean(0) - clip.frames[core].mean(0)).max() < 2
    assert (fixed[clip.coverage == 0] == clip.frames[clip.coverage == 0]).all()      # the background stays


def test_flat_frames_stay_flat_and_strength_blends():
    flat = np.full((2, 8, 8, 3), 100, np.uint8)
    ref = np.full((1, 8, 8, 3), 140, np.uint8)
    assert (histogram_match(flat, ref) == 140).all()
    assert (histogram_match(flat, ref, 0.5) == 120).all() and (histogram_match(flat, ref, 0.0) == 100).all()


def test_bad_input_is_refused():
    frames = _clip().frames
    with pytest.raises(ValueError, match="uint8"):
        histogram_match(frames.astype(np.float32), frames)
    with pytest.raises(ValueError, match="strength"):
        histogram_match(frames, frames, 1.5)
