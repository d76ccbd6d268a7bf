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


def test_temporal_loss_sees_motion_held_back_inside_a_latent_frame():
    """A reconstruction that stutters (each group of 4 frames holds one position, then jumps) costs the same L1 as
    one lagging a frame behind, but more on the frame-difference term; a constant error costs nothing there."""
    import torch

    from kinema.data.shapes import Scene, render_clip
    from kinema.train.vae import reconstruction_loss

    clip = render_clip(Scene("red", "circle", "right", "black"), np.random.default_rng(0), 17, 32, 32)
    video = torch.from_numpy(clip.frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    held = [0] + [2 + 4 * ((t - 1) // 4) for t in range(1, 17)]                                 # 0, 2, 2, 2, 2, 6...
    stutter, lag = video[:, :, held], video[:, :, [0, 0, *range(1, 16)]]
    weight = torch.ones(1, 1, 17, 32, 32)
    offset = reconstruction_loss(video + 0.1, video, weight)
    assert offset["l1"] > 0.09 and offset["temporal"] < 1e-6
    s, g = reconstruction_loss(stutter, video, weight), reconstruction_loss(lag, video, weight)
    assert abs(s["l1"] - g["l1"]) < 1e-4 and s["temporal"] > 1.2 * g["temporal"]
