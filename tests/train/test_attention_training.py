"""Training the DiT in each attention mode: equal parameter counts, windows cropped from longer clips, clean prefixes."""

import torch

import kinema
from kinema.dit.model import DiT
from kinema.train import dit as train_dit
from kinema.train import vae as train_vae


def test_the_modes_have_about_the_same_parameter_count():
    count = lambda cfg: sum(p.numel() for p in DiT(cfg).parameters())  # noqa: E731
    base = train_dit.DIT_PRESETS["shapes"]
    full = count(base)
    for mode, conv in (("causal", False), ("factorised", False), ("factorised", True)):
        cfg = train_dit.with_attention(base, mode, conv)
        assert cfg.attention == mode and abs(count(cfg) - full) / full < 0.002


def test_windows_are_consecutive_frames_of_the_clip():
    g = torch.Generator().manual_seed(0)
    x0 = torch.arange(6 * 9).float().view(6, 1, 9, 1, 1).expand(6, 2, 9, 3, 3)
    crops, starts = train_dit.crop_windows(x0, 4, g)
    assert crops.shape == (6, 2, 4, 3, 3)
    for crop, clip, s in zip(crops, x0, starts):
        assert torch.equal(crop, clip[:, s:s + 4])
    assert starts.min() >= 0 and starts.max() <= 5


def test_clean_prefixes_cover_every_window_that_starts_inside_a_clip():
    g = torch.Generator().manual_seed(0)
    starts = torch.tensor([0, 2, 0, 1] * 500)
    given, scored = train_dit.clean_prefix(torch.zeros(2000, 5, dtype=torch.bool), starts, 0.5, g)
    assert (scored == ~given).all()  # every noisy frame is scored unless asked otherwise
    held = given.any(1)
    assert held[starts > 0].all()
    assert abs(held[starts == 0].float().mean() - 0.5) < 0.05
    lengths = given.sum(1)[held]
    assert lengths.min() == 1 and lengths.max() == 4  # never the whole window
    assert (given == (torch.arange(5)[None] < given.sum(1, keepdim=True))).all()  # a prefix, not any set


def test_next_only_scores_the_first_frame_after_the_prefix_and_leaves_other_samples_alone():
    g = torch.Generator().manual_seed(1)
    first = torch.zeros(1000, 5, dtype=torch.bool)
    first[:, 0] = True  # image-to-video samples: every noisy frame scored unless a prefix replaces the condition
    given, scored = train_dit.clean_prefix(first, None, 0.5, g, next_only=True)
    lengths = given.sum(1)
    picked = scored.sum(1) == 1
    assert 0.4 < picked.float().mean() < 0.6
    assert (scored[picked].float().argmax(1) == lengths[picked]).all()  # the frame right after the prefix
    assert (scored[~picked] == ~given[~picked]).all()
    assert not (scored & given).any()


def test_a_causal_model_trains_on_windows_and_streams(tmp_path):
    from kinema.pipelines.stream import stream_latents

    vae_ckpt = train_vae.train(train_vae.parse_args(
        ["--out", str(tmp_path / "vae"), "--preset", "tiny", "--steps", "1", "--batch", "1", "--frames", "5",
         "--size", "32"]))
    args = train_dit.parse_args(
        ["--vae", str(vae_ckpt), "--out", str(tmp_path / "dit"), "--preset", "tiny", "--pool", "4", "--frames", "13",
         "--size", "32", "--steps", "2", "--batch", "2", "--ckpt-every", "2", "--attention", "causal",
         "--window", "3", "--prefix-frac", "0.5", "--long-pool", "2"])
    train_dit.train(args)
    pipe = kinema.load_pipeline(tmp_path / "dit" / "model")
    assert pipe.dit.config.attention == "causal" and pipe.defaults.frames == 9
    pieces = list(stream_latents(pipe, ["a red circle bouncing"], frames=21, window=2, steps=2))
    assert sum(p.shape[2] for p in pieces) == 6


def test_long_clips_add_every_window_with_its_start():
    pool = {"latents": torch.zeros(2, 1, 3, 1, 1), "caption_ids": torch.tensor([0, 1]), "text": torch.zeros(2, 4, 8),
            "captions": ["a", "b"], "empty": torch.zeros(4, 8)}
    long = {"latents": torch.arange(5).float().view(1, 1, 5, 1, 1) + 10, "caption_ids": torch.tensor([0]),
            "text": torch.ones(1, 4, 8), "captions": ["c"]}
    merged = train_dit.add_long_windows(pool, long)
    assert merged["latents"].shape == (5, 1, 3, 1, 1) and merged["starts"].tolist() == [0, 0, 0, 1, 2]
    for i, s in enumerate((0, 1, 2)):
        assert merged["latents"][2 + i].flatten().tolist() == [10.0 + s, 11.0 + s, 12.0 + s]
    assert merged["captions"][merged["caption_ids"][3]] == "c"
    assert torch.equal(merged["text"][merged["caption_ids"][4]], torch.ones(4, 8))
