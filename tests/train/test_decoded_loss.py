import torch

from kinema.flow.convention import add_noise, velocity_target
from kinema.train import dit as train_dit
from kinema.train.decoded_loss import DecodedLoss, object_weights
from kinema.train.vae import VAE_PRESETS
from kinema.vae.model import VideoVAE


def _setup(b=4, seed=0):
    torch.manual_seed(seed)
    vae = VideoVAE(VAE_PRESETS["tiny"]).eval().requires_grad_(False)
    z = vae.config.z_dim
    x0, noise = torch.randn(b, z, 2, 4, 4), torch.randn(b, z, 2, 4, 4)               # (B, C, T', H', W')
    t = torch.tensor([0.1, 0.3, 0.8, 0.2])[:b]
    t_frame = t[:, None].expand(b, 2)
    return vae, x0, noise, t, t_frame, add_noise(x0, noise, t_frame[:, None, :, None, None])


def test_the_true_velocity_costs_nothing_and_a_wrong_one_costs_only_low_noise_samples():
    vae, x0, noise, t, t_frame, x_t = _setup()
    loss = DecodedLoss(vae, 1.0, t_max=0.5, max_samples=8)
    exact = loss(x0, x_t, velocity_target(x0, noise), t_frame, t)
    assert exact.abs().max() < 1e-5
    wrong = loss(x0, x_t, velocity_target(x0, noise) + 0.5, t_frame, t)
    assert (wrong[[0, 1, 3]] > 1e-3).all() and wrong[2] == 0          # t = 0.8 is above t_max


def test_at_most_max_samples_are_decoded():
    vae, x0, noise, t, t_frame, x_t = _setup()
    loss = DecodedLoss(vae, 1.0, t_max=0.5, max_samples=2)(x0, x_t, torch.zeros_like(x0), t_frame, t)
    assert int((loss > 0).sum()) == 2


def test_gradients_reach_the_velocity_and_not_the_frozen_decoder():
    vae, x0, noise, t, t_frame, x_t = _setup()
    v = torch.zeros_like(x0, requires_grad=True)
    DecodedLoss(vae, 1.0)(x0, x_t, v, t_frame, t).sum().backward()
    assert v.grad is not None and v.grad[[0, 1, 3]].abs().sum() > 0 and v.grad[2].abs().sum() == 0
    assert all(p.grad is None for p in vae.parameters())


def test_object_pixels_get_the_boost():
    video = -torch.ones(1, 3, 2, 8, 8)
    video[:, 0, :, 2:4, 2:4] = 1.0                                       # a red square on black
    w = object_weights(video, 8.0)
    assert w.shape == (1, 1, 2, 8, 8)
    assert (w[0, 0, :, 2:4, 2:4] == 9).all() and w.sum() == 2 * (64 + 8 * 4)


def test_dit_training_runs_with_the_pixel_loss(tmp_path):
    from kinema.train import vae as train_vae

    vae_ckpt = train_vae.train(train_vae.parse_args(
        ["--out", str(tmp_path / "vae"), "--preset", "tiny", "--steps", "1", "--batch", "2", "--frames", "5",
         "--size", "32", "--ckpt-every", "1", "--warmup", "1"]))
    argv = ["--vae", str(vae_ckpt), "--preset", "tiny", "--pool", "6", "--frames", "5", "--size", "32",
            "--steps", "2", "--batch", "3", "--ckpt-every", "2", "--warmup", "1", "--t-shift", "0.2"]
    plain = train_dit.train(train_dit.parse_args(argv + ["--out", str(tmp_path / "a")]))
    pixel = train_dit.train(train_dit.parse_args(argv + ["--out", str(tmp_path / "b"), "--pixel-loss", "5",
                                                         "--pixel-t-max", "1.0"]))
    a, b = (torch.load(p, weights_only=False)["model"] for p in (plain, pixel))
    assert any(not torch.equal(a[k], b[k]) for k in a)                 # the loss changed the training
