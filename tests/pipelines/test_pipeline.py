import pytest
import torch

import kinema
from kinema.pipelines.loading import ModelError, load_pipeline


def test_load_exposes_components(tiny_model_dir):
    pipe = kinema.load_pipeline(tiny_model_dir)
    assert pipe.vae.config.z_dim == 4 and pipe.dit.config.dim == 24
    emb = pipe.text_encoder(["a prompt"])
    assert emb.shape == (1, 32, 384)


def test_same_seed_same_video_different_seed_different_video(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    a = pipe("a red circle moving right on a black background", seed=3)
    b = pipe("a red circle moving right on a black background", seed=3)
    c = pipe("a red circle moving right on a black background", seed=4)
    assert a.frames.shape == (9, 32, 32, 3)
    assert (a.frames == b.frames).all()
    assert (a.frames != c.frames).any()


def test_save_then_load_gives_identical_outputs(tiny_model_dir, tmp_path):
    from kinema.pipelines.loading import save_model

    pipe = load_pipeline(tiny_model_dir)
    copy = save_model(tmp_path / "copy", pipe.text_encoder.config, pipe.vae, pipe.dit, pipe.defaults, "copy")
    again = load_pipeline(copy)
    for a, b in zip(pipe.dit.state_dict().values(), again.dit.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(1, 4, 3, 4, 4)
    t, text = torch.tensor([500.0]), torch.randn(1, 6, 384)
    assert torch.equal(pipe.dit(x, t, text), again.dit(x, t, text))
    assert torch.equal(pipe.vae.decode(x), again.vae.decode(x))
    assert (pipe("a blue square", seed=1).frames == again("a blue square", seed=1).frames).all()


def test_a_two_expert_model_saves_and_loads(tiny_model_dir, tmp_path):
    """A kinema folder with a low-noise expert loads as a two-expert pipeline that switches at its boundary; its
    DiTs may be stored in float16 (they load back to the pipeline's dtype, equal to the rounded weights)."""
    from kinema.dit.model import DiT
    from kinema.pipelines.loading import save_model
    from kinema.pipelines.text_to_video import TextToVideoPipeline
    from kinema.pipelines.two_experts import TwoExpertPipeline

    pipe = load_pipeline(tiny_model_dir)
    low = DiT(pipe.dit.config).eval()
    torch.manual_seed(1)
    for p in low.parameters():
        p.data.normal_(0, 0.1)
    folder = save_model(tmp_path / "two", pipe.text_encoder.config, pipe.vae, pipe.dit, pipe.defaults, "two",
                        dit_2=low, boundary=0.5, dit_dtype=torch.float16)
    two = load_pipeline(folder)
    assert isinstance(two, TwoExpertPipeline) and two.boundary == 0.5
    assert next(two.dit_2.parameters()).dtype == torch.float32
    for ours, theirs in ((two.dit, pipe.dit), (two.dit_2, low)):
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b.half().float())
    prompt = "a blue square"
    assert (two(prompt, seed=1).frames != pipe(prompt, seed=1).frames).any()  # the low-noise expert takes part
    high_only = TwoExpertPipeline(two.text_encoder, two.vae, two.dit, two.dit_2, 0.0, two.defaults)
    single = TextToVideoPipeline(two.text_encoder, two.vae, two.dit, two.defaults)
    assert (high_only(prompt, seed=1).frames == single(prompt, seed=1).frames).all()   # boundary 0: the DiT alone
    one = save_model(folder, pipe.text_encoder.config, pipe.vae, pipe.dit, pipe.defaults, "one")  # overwritten
    assert not (one / "dit_2.safetensors").exists() and not isinstance(load_pipeline(one), TwoExpertPipeline)
    with pytest.raises(ValueError, match="both"):
        save_model(tmp_path / "x", pipe.text_encoder.config, pipe.vae, pipe.dit, pipe.defaults, "x", dit_2=low)


def test_bad_settings_are_refused(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        pipe.settings(frames=10)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe.settings(height=40)
    with pytest.raises(ValueError, match="empty"):
        pipe("   ")
    with pytest.raises(ValueError, match="limit"):
        pipe("x" * 5000)


def test_broken_model_folders_give_clear_errors(tiny_model_dir, tmp_path):
    import shutil

    with pytest.raises(ModelError, match="neither a built-in model"):
        load_pipeline(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "dit.safetensors").unlink()
    with pytest.raises(ModelError, match="missing weights file"):
        load_pipeline(broken)
    shutil.copy(tiny_model_dir / "dit.safetensors", broken / "dit.safetensors")
    data = (broken / "vae.safetensors").read_bytes()
    (broken / "vae.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ModelError, match="vae.safetensors"):
        load_pipeline(broken)
    shutil.copy(tiny_model_dir / "dit.safetensors", broken / "vae.safetensors")  # a file of another model
    with pytest.raises(ModelError, match="does not fit"):
        load_pipeline(broken)


def test_given_keyframes_come_out_exactly_as_encoded(tiny_model_dir):
    import numpy as np

    pipe = load_pipeline(tiny_model_dir)
    s = pipe.settings(frames=9)
    rng = np.random.default_rng(0)
    first, last = (rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(2))
    clean, given = pipe.encode_keyframes(s, 2, first, last)
    assert given.tolist() == [[True, False, True]] * 2
    text, neg = pipe.encode_prompts(["a red circle", "a blue box"], "")
    for sampler in ("euler", "heun"):
        s2 = pipe.settings(frames=9, sampler=sampler)
        z = pipe.denoise(pipe.initial_noise(s2, [0, 1]), text, neg, s2, keyframes=(clean, given))
        assert torch.equal(z[:, :, 0], clean[:, :, 0]) and torch.equal(z[:, :, 2], clean[:, :, 2])
        free = pipe.denoise(pipe.initial_noise(s2, [0, 1]), text, neg, s2)
        assert not torch.equal(free[:, :, 0], clean[:, :, 0])
    video = pipe("a red circle", image=first)
    assert video.frames.shape == (9, 32, 32, 3)


def test_image_loading_errors(tmp_path):
    from kinema.video.image import fit_image, load_image

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(bad)
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "absent.png")
    import numpy as np

    assert fit_image(np.zeros((30, 90, 3), np.uint8), 32, 32).shape == (32, 32, 3)
