import numpy as np

from kinema.data.shapes import COLOURS, HELD_OUT, random_training_clip
from kinema.train.vae import HELD_OUT_MARGIN, clip_batch, random_object_colour, recoloured


def test_recolouring_with_its_own_colour_changes_nothing_and_another_moves_only_the_object():
    rng = np.random.default_rng(0)
    clip = random_training_clip(rng, 5, 64, 64)
    same = recoloured(clip, np.array(COLOURS[clip.scene.colour], np.float32))
    assert np.array_equal(same, clip.frames)
    other = recoloured(clip, np.array([240, 110, 180], np.float32))
    changed = np.abs(other.astype(int) - clip.frames).sum(-1) > 0
    assert changed.any() and (clip.coverage[changed] > 0).all()


def test_random_colours_keep_away_from_the_held_out_pairs():
    rng = np.random.default_rng(1)
    for shape in ("circle", "square", "triangle"):
        banned = [np.array(COLOURS[c]) for c, s in HELD_OUT if s == shape]
        for _ in range(300):
            rgb = random_object_colour(rng, shape)
            assert all(np.linalg.norm(rgb - b) > HELD_OUT_MARGIN for b in banned)


def test_colour_jitter_changes_the_batch():
    a, _ = clip_batch(np.random.default_rng(2), 4, 5, 32, 0.0)
    b, _ = clip_batch(np.random.default_rng(2), 4, 5, 32, 1.0)
    assert a.shape == b.shape and not np.allclose(a.numpy(), b.numpy())


def test_low_contrast_clips_weigh_more_and_weights_stay_in_bounds():
    import torch

    from kinema.data.shapes import Scene, render_clip
    from kinema.train.vae import contrast_weight

    clips = [render_clip(Scene(c, "square", "still", b), np.random.default_rng(0), 5, 32, 32)
             for c, b in [("purple", "gray"), ("yellow", "black"), ("white", "black")]]
    video = torch.from_numpy(np.stack([c.frames for c in clips])).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
    cover = torch.from_numpy(np.stack([c.coverage for c in clips]))[:, None]
    w = contrast_weight(video, cover, 250.0, 3.0).flatten()
    assert w[0] > 2.0 and w[1] == 1.0 and w[2] == 1.0      # purple on gray: contrast ~101
    assert torch.all(contrast_weight(video, cover, 1e4, 3.0) == 3.0)
