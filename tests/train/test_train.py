import torch

import kinema
from kinema.train import dit as train_dit
from kinema.train import vae as train_vae


def _vae_args(out, steps, resume=False):
    argv = ["--out", str(out), "--preset", "tiny", "--steps", str(steps), "--batch", "2", "--frames", "5",
            "--size", "32", "--ckpt-every", "2", "--warmup", "2"] + (["--resume"] if resume else [])
    return train_vae.parse_args(argv)


def _dit_args(vae_ckpt, out, steps, resume=False):
    argv = ["--vae", str(vae_ckpt), "--out", str(out), "--preset", "tiny", "--pool", "6", "--frames", "5",
            "--size", "32", "--steps", str(steps), "--batch", "3", "--ckpt-every", "2", "--warmup", "2"]
    return train_dit.parse_args(argv + (["--resume"] if resume else []))


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_vae_training_runs_and_resumes_exactly(tmp_path):
    import json

    straight = train_vae.train(_vae_args(tmp_path / "a", 4))
    train_vae.train(_vae_args(tmp_path / "b", 2))
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a run killed after its last checkpoint logged more
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n")
    resumed = train_vae.train(_vae_args(tmp_path / "b", 4, resume=True))
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"loss"' in lines[0]


def test_dit_training_writes_a_loadable_model_and_resumes_exactly(tmp_path):
    vae_ckpt = train_vae.train(_vae_args(tmp_path / "vae", 2))
    straight = train_dit.train(_dit_args(vae_ckpt, tmp_path / "a", 4))
    train_dit.train(_dit_args(vae_ckpt, tmp_path / "b", 2))
    resumed = train_dit.train(_dit_args(vae_ckpt, tmp_path / "b", 4, resume=True))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert "loss_t" in log  # loss per t-bin
    pipe = kinema.load_pipeline(tmp_path / "a" / "model")
    assert pipe.vae.latents_std.flatten().tolist() != [1.0] * 4  # statistics measured on the pool
    video = pipe("a red circle moving right on a black background", steps=2)
    assert video.frames.shape == (5, 32, 32, 3)


def test_given_frames_are_clean_and_not_in_the_loss():
    from tests.conftest import tiny_dit

    dit, g = tiny_dit(), torch.Generator().manual_seed(0)
    dit_causal = tiny_dit(attention="causal")
    x0, text = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 5, 384, generator=g)
    t, noise = torch.tensor([0.7, 0.4]), torch.randn(2, 4, 3, 4, 4, generator=g)
    given = torch.tensor([[True, False, False], [True, False, True]])
    other = noise.clone()
    other[0, :, 0], other[1, :, [0, 2]] = 5.0, -5.0  # different noise on the given frames only
    with torch.no_grad():
        a = train_dit.flow_loss(dit, x0, text, t, noise, given)
        b = train_dit.flow_loss(dit, x0, text, t, other, given)
        c = train_dit.flow_loss(dit, x0, text, t, other)  # nothing given: the noise matters
    torch.testing.assert_close(a, b)
    assert (a - c).abs().min() > 1e-4
    scored = torch.tensor([[False, True, False], [False, True, False]])
    other[:, :, 2] = 3.0  # frame 2 is noisy but not scored; causal attention keeps frame 1 from seeing it
    with torch.no_grad():
        d = train_dit.flow_loss(dit_causal, x0, text, t, noise, given, scored=scored)
        e = train_dit.flow_loss(dit_causal, x0, text, t, other, given, scored=scored)
        f = train_dit.flow_loss(dit_causal, x0, text, t, other, given)
    torch.testing.assert_close(d, e)
    assert (e - f)[0].abs() > 1e-4  # sample 0 scores its noisy frame 2 only without `scored`
    frac = train_dit.given_frames(4000, 5, 0.35, g).any(1).float().mean()
    assert abs(frac - 0.35) < 0.03


def test_noised_given_frames_take_their_noise_and_time():
    """--given-noise: a given frame at time s is x0 + s (noise - x0) with timestep s, so its noise now matters;
    at s = 0 it is the clean frame as before. Half the samples stay clean, the others draw s in [0, most]."""
    from tests.conftest import tiny_dit

    dit, g = tiny_dit(attention="causal"), torch.Generator().manual_seed(1)
    x0, text = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 5, 384, generator=g)
    t, noise = torch.tensor([0.7, 0.4]), torch.randn(2, 4, 3, 4, 4, generator=g)
    given = torch.tensor([[True, False, False], [True, True, False]])
    other = noise.clone()
    other[:, :, 0] += 2.0  # other noise on a given frame
    with torch.no_grad():
        clean = train_dit.flow_loss(dit, x0, text, t, noise, given)
        zero = train_dit.flow_loss(dit, x0, text, t, other, given, given_t=torch.zeros(2))
        a = train_dit.flow_loss(dit, x0, text, t, noise, given, given_t=torch.tensor([0.9, 0.0]))
        b = train_dit.flow_loss(dit, x0, text, t, other, given, given_t=torch.tensor([0.9, 0.0]))
    torch.testing.assert_close(zero, clean)
    torch.testing.assert_close(a[1], clean[1])
    assert (a[0] - clean[0]).abs() > 1e-4 * clean[0] and (a[0] - b[0]).abs() > 1e-4 * clean[0]
    s = train_dit.given_times(4000, 0.3, g)
    assert abs((s == 0).float().mean() - 0.5) < 0.03 and s.max() <= 0.3 and s[s > 0].mean() > 0.13


def test_dit_training_can_start_from_a_model_folder(tmp_path):
    """A later run continues from shipped weights: the VAE and the DiT initialisation come from a model folder."""
    vae_ckpt = train_vae.train(_vae_args(tmp_path / "vae", 2))
    train_dit.train(_dit_args(vae_ckpt, tmp_path / "a", 2))
    folder = tmp_path / "a" / "model"
    args = _dit_args(folder, tmp_path / "b", 2)
    args.init = str(folder)
    args.t_shift, args.sample_shift = 1.0, 3.0  # train on more low-noise times, sample as before
    train_dit.train(args)
    assert (tmp_path / "b" / "model" / "dit.safetensors").exists()
    assert kinema.load_pipeline(folder).defaults.shift == 2.0                    # --t-shift's default
    assert kinema.load_pipeline(tmp_path / "b" / "model").defaults.shift == 3.0  # --sample-shift


def test_refine_head_starts_from_the_given_vae_and_trains_the_decoder_only(tmp_path):
    """--init with --refine-dim: the grown VAE decodes exactly as the given one at step 0; with --freeze-encoder
    training moves the decoder (the new head included) and leaves the encoder, so latents stay valid."""
    from tests.conftest import tiny_vae

    base = tiny_vae()
    grown = train_vae.with_refine_head(base, 4)
    z = torch.randn(1, 4, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(grown.eval().decode(z), base.decode(z), rtol=0, atol=0)
    first = train_vae.train(_vae_args(tmp_path / "a", 2))
    args = _vae_args(tmp_path / "b", 2)
    args.init, args.refine_dim, args.freeze_encoder = str(first), 4, True
    before = torch.load(first, weights_only=False)["ema"]  # --init starts from the EMA weights
    after = _weights(train_vae.train(args))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not torch.equal(before["decoder.conv_out.spatial.weight"], after["decoder.conv_out.spatial.weight"])
    assert after["decoder.refine.conv_out.weight"].abs().max() > 0


def test_a_decoder_only_run_exports_the_base_model_with_the_new_vae(tmp_path, tiny_model_dir):
    """--model-out writes the base model with the trained VAE: DiT and latent statistics as they were, encoder
    unchanged, the new decoder (refine head included) in place; a run that trains the encoder cannot export."""
    import pytest

    args = _vae_args(tmp_path / "run", 2)
    args.init, args.refine_dim, args.freeze_encoder = str(tiny_model_dir), 4, True
    args.model_out = str(tmp_path / "model")
    train_vae.train(args)
    base, new = kinema.load_pipeline(tiny_model_dir), kinema.load_pipeline(tmp_path / "model")
    assert all(torch.equal(v, new.dit.state_dict()[k]) for k, v in base.dit.state_dict().items())
    assert new.vae.config.latents_std == base.vae.config.latents_std and new.vae.config.refine_dim == 4
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(new.vae.encode(video), base.vae.encode(video), rtol=0, atol=0)
        assert not torch.equal(new.vae.decode(base.vae.encode(video)), base.vae.decode(base.vae.encode(video)))
    other = train_vae.with_refine_head(base.vae, 0)
    with torch.no_grad():
        other.encoder.conv_in.spatial.weight.add_(0.01)
    with pytest.raises(ValueError, match="encoder is not"):
        train_vae.export_model(other, tiny_model_dir, tmp_path / "bad")
    args.freeze_encoder = False
    with pytest.raises(ValueError, match="needs --freeze-encoder"):
        train_vae.train(args)


def test_exporting_a_two_expert_model_keeps_both_experts_and_their_storage(tmp_path, tiny_model_dir):
    """A decoder-only VAE put into a two-expert model (the shipped default is one, its DiTs stored in float16)
    keeps the low-noise expert, the boundary and the DiTs' dtype."""
    from safetensors import safe_open

    from kinema.pipelines.loading import save_model
    from tests.conftest import tiny_dit

    base = kinema.load_pipeline(tiny_model_dir)
    two = save_model(tmp_path / "two", base.text_encoder.config, base.vae, base.dit, base.defaults, "two",
                     dit_2=tiny_dit(seed=1), boundary=0.4, dit_dtype=torch.float16)
    vae = train_vae.with_refine_head(base.vae, 0)
    out = kinema.load_pipeline(train_vae.export_model(vae, two, tmp_path / "out"))
    ref = kinema.load_pipeline(two)
    assert out.boundary == 0.4 and all(torch.equal(v, out.dit_2.state_dict()[k]) for k, v in ref.dit_2.state_dict().items())
    for name in ("dit.safetensors", "dit_2.safetensors"):
        with safe_open(str(tmp_path / "out" / name), framework="pt") as f:
            assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())


def test_t_range_limits_the_training_times(tmp_path):
    import json

    import pytest

    vae_ckpt = train_vae.train(_vae_args(tmp_path / "vae", 2))
    args = train_dit.parse_args(["--vae", str(vae_ckpt), "--out", str(tmp_path / "low"), "--preset", "tiny",
                                 "--pool", "6", "--frames", "5", "--size", "32", "--steps", "6", "--batch", "8",
                                 "--ckpt-every", "6", "--warmup", "1", "--t-range", "0,0.25"])
    train_dit.train(args)
    rows = [json.loads(x) for x in (tmp_path / "low" / "metrics.jsonl").read_text().splitlines()]
    bins = {k for r in rows for k in r if k.startswith("loss_t")}
    assert bins == {"loss_t0.00-0.25"}  # 48 draws, none above the range
    for bad in ("0.5,0.5", "0,1.5", "-0.1,0.5", "half"):
        with pytest.raises(SystemExit):
            train_dit.parse_args(["--out", "x", "--t-range", bad])
