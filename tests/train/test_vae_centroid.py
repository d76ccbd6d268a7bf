import numpy as np
import torch

from kinema.data.shapes import Scene, render_clip
from kinema.train.vae import centroid_loss, object_and_background, object_centres


def _batch(scenes, frames=5, size=32, seed=0):
    clips = [render_clip(s, np.random.default_rng(seed), frames, size, size) for s in scenes]
    video = torch.from_numpy(np.stack([c.frames for c in clips])).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
    cover = torch.from_numpy(np.stack([c.coverage for c in clips]))[:, None]
    return video.contiguous(), cover, clips


def test_centres_follow_the_rendered_path():
    video, cover, clips = _batch([Scene("red", "circle", "right", "black"), Scene("blue", "square", "down", "gray")])
    fg, bg = object_and_background(video, cover)
    centres = object_centres(video, fg, bg, torch.ones_like(cover[:, 0], dtype=torch.bool))  # (B, T, 2)
    truth = torch.from_numpy(np.stack([c.centres for c in clips])).float()
    assert (centres - truth).abs().max() < 0.1


def test_centroid_loss_is_zero_on_the_clip_and_the_shift_in_pixels_when_moved():
    video, cover, _ = _batch([Scene("yellow", "square", "still", "black"), Scene("green", "circle", "still", "gray")])
    assert centroid_loss(video, video, cover) == 0
    moved = torch.roll(video, shifts=1, dims=4)                                       # one pixel to the right
    assert abs(float(centroid_loss(moved, video, cover)) - 1.0) < 0.05
    assert centroid_loss(moved.requires_grad_(), video, cover).grad_fn is not None


def test_clips_with_too_little_contrast_are_left_out():
    video, cover, _ = _batch([Scene("white", "circle", "still", "black")])
    faint = -1 + 0.05 * (video + 1)                                                  # white at 5 %: ~13/255 contrast
    assert centroid_loss(torch.roll(faint, 2, dims=4), faint, cover) == 0
    assert centroid_loss(torch.roll(video, 2, dims=4), video, cover) > 1.5


def test_background_noise_far_from_the_object_does_not_move_its_centre():
    video, cover, _ = _batch([Scene("red", "circle", "still", "black")])
    noisy = video + 0.03 * torch.rand(video.shape, generator=torch.Generator().manual_seed(0))
    assert centroid_loss(noisy, video, cover) < 0.1                                  # 4/255 of noise
    assert centroid_loss(noisy, video, cover, reach=40) > 0.5                         # counted over the whole frame
