"""Streaming generation with a causal model equals its ordinary (joint) sampling, and decodes as it goes."""

import numpy as np
import pytest
import torch

from kinema.pipelines.loading import load_pipeline
from kinema.pipelines.stream import chunk_slices, stream_latents, stream_video

PROMPT = "a red circle bouncing left and right on a black background"


def joint_latents(pipe, frames, image=None, **kw):
    s = pipe.settings(frames=frames, **kw)
    text, neg = pipe.encode_prompts([PROMPT], s.negative_prompt)
    keyframes = pipe.encode_keyframes(s, 1, image)
    return pipe.denoise(pipe.initial_noise(s, [s.seed]), text, neg, s, keyframes=keyframes)


def red_square():
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:16, 8:16] = (220, 40, 40)
    return image


def streamed(pipe, **kw):
    return torch.cat(list(stream_latents(pipe, [PROMPT], guidance=3.0, **kw)), dim=2)


@pytest.mark.parametrize("chunk, sampler", [(1, "euler"), (2, "heun")])
def test_joint_past_streaming_equals_joint_sampling(causal_pipe, chunk, sampler):
    for img in (None, red_square()):
        joint = joint_latents(causal_pipe, 17, img, sampler=sampler, guidance=3.0)
        out = streamed(causal_pipe, image=img, chunk=chunk, frames=17, sampler=sampler, past="joint")
        assert out.shape == joint.shape
        torch.testing.assert_close(out, joint, atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk, window", [(1, None), (2, None), (1, 2)])
def test_clean_past_streaming_equals_sampling_without_a_cache(causal_pipe, chunk, window):
    kw = dict(image=red_square(), chunk=chunk, frames=17, steps=3)
    cached, recomputed = streamed(causal_pipe, **kw), streamed(causal_pipe, use_cache=False, **kw)
    if window is None:
        torch.testing.assert_close(cached, recomputed, atol=1e-4, rtol=0)
    else:  # the cached past was computed with its own, longer history: the same only up to the window
        windowed = streamed(causal_pipe, window=window, **kw)
        torch.testing.assert_close(windowed[:, :, :window + 1], cached[:, :, :window + 1], atol=1e-4, rtol=0)
        assert (windowed[:, :, window + 1:] - cached[:, :, window + 1:]).abs().max() > 1e-4
    assert not torch.allclose(cached, joint_latents(causal_pipe, 17, red_square(), steps=3, guidance=3.0))


def test_streamed_frames_equal_the_generated_video(causal_pipe):
    video = causal_pipe(PROMPT, frames=13, seed=2)
    pieces = list(stream_video(causal_pipe, [PROMPT], seeds=[2], frames=13, past="joint"))
    assert [p.shape[2] for p in pieces] == [1, 4, 4, 4]
    frames = torch.cat(pieces, dim=2)[0]                                        # (3, T, H, W)
    ours = ((frames.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(ours.astype(int) - video.frames.astype(int)).max() <= 1


def test_a_window_makes_any_length(causal_pipe):
    pieces = list(stream_latents(causal_pipe, [PROMPT], frames=41, window=2, steps=2))
    assert sum(p.shape[2] for p in pieces) == 11


def test_streaming_refuses_what_it_cannot_do(tiny_model_dir, causal_pipe):
    with pytest.raises(ValueError, match="causal model"):
        next(stream_latents(load_pipeline(tiny_model_dir), [PROMPT]))
    with pytest.raises(ValueError, match="window"):
        next(stream_latents(causal_pipe, [PROMPT], chunk=3, window=2))
    with pytest.raises(ValueError, match="pipe.generate"):
        next(stream_latents(causal_pipe, [PROMPT], past="joint", use_cache=False))
    assert chunk_slices(9, 3) == [slice(0, 1), slice(1, 4), slice(4, 7), slice(7, 9)]


def test_a_noised_past_changes_later_chunks_only_and_is_each_samples_own(causal_pipe):
    """context_noise: the cached past is noised (frame 0 has none, so it stays as it was); the noise is drawn from
    each sample's seed, so a sample streams the same alone or beside another; the cache-free path refuses it."""
    kw = dict(frames=17, steps=4, seeds=[0])  # times 1, .75 | .5, .25: both experts of a two-expert pipe
    clean = streamed(causal_pipe, **kw)
    noised = streamed(causal_pipe, context_noise=0.2, **kw)
    torch.testing.assert_close(noised[:, :, :1], clean[:, :, :1], atol=0, rtol=0)
    assert (noised[:, :, 1:] - clean[:, :, 1:]).abs().max() > 1e-3
    pair = torch.cat(list(stream_latents(causal_pipe, [PROMPT, "a blue square moving up on a white background"],
                                         seeds=[0, 5], guidance=3.0, frames=17, steps=4, context_noise=0.2)), dim=2)
    torch.testing.assert_close(pair[:1], noised, atol=1e-5, rtol=0)
    low_only = streamed(causal_pipe, context_noise_2=0.2, **kw)  # two experts: only the low-noise one's past
    assert ((low_only - clean).abs().max() > 1e-3) == (len(causal_pipe.experts) == 2)
    with pytest.raises(ValueError, match="context noise"):
        next(stream_latents(causal_pipe, [PROMPT], use_cache=False, context_noise=0.2))
    with pytest.raises(ValueError, match="context noise"):
        causal_pipe.settings(context_noise=1.0)


def test_continuation_guidance_takes_over_after_the_models_own_clip(causal_pipe):
    """continue_guidance: the chunks within the model's own clip (9 frames: 3 latent frames) keep the guidance, the
    later ones take the continuation's; the guided past then keeps its conditional half, so the cached stream equals
    recomputing the past without a cache, for each sample of a batch."""
    kw = dict(frames=17, steps=2, seeds=[0])
    plain, cont = streamed(causal_pipe, **kw), streamed(causal_pipe, continue_guidance=1.0, **kw)
    torch.testing.assert_close(cont[:, :, :3], plain[:, :, :3], atol=0, rtol=0)
    assert (cont[:, :, 3:] - plain[:, :, 3:]).abs().max() > 1e-3
    torch.testing.assert_close(cont, streamed(causal_pipe, continue_guidance=1.0, use_cache=False, **kw),
                               atol=1e-4, rtol=0)
    pair = dict(frames=17, steps=2, seeds=[0, 5], guidance=3.0, continue_guidance=1.0)
    prompts = [PROMPT, "a blue square moving up on a white background"]
    cached = torch.cat(list(stream_latents(causal_pipe, prompts, **pair)), dim=2)
    torch.testing.assert_close(cached[:1], cont, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached, torch.cat(list(stream_latents(causal_pipe, prompts, use_cache=False, **pair)),
                                                 dim=2), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="continue_guidance"):
        list(stream_latents(causal_pipe, [PROMPT], frames=17, steps=2, guidance=1.0, continue_guidance=3.0))


def test_continuation_settings_resolve_each_experts_guidance(causal_pipe):
    s = causal_pipe.settings(guidance=3.0, guidance_2=-1.0)
    assert causal_pipe.expert_guidance(causal_pipe.continuation(s)) == causal_pipe.expert_guidance(s)  # nothing set
    c = causal_pipe.continuation(causal_pipe.settings(guidance=3.0, continue_guidance=1.0))
    assert causal_pipe.expert_guidance(c) == [1.0, 3.0][:len(causal_pipe.experts)]  # the low-noise expert keeps its own
    c = causal_pipe.continuation(causal_pipe.settings(guidance=3.0, continue_guidance_2=1.5))
    assert causal_pipe.expert_guidance(c) == [3.0, 1.5][:len(causal_pipe.experts)]


def test_a_context_continues_a_video_in_latent_space(causal_pipe):
    """Streaming after given latents equals streaming the whole video with those latents as its first chunks."""
    first = streamed(causal_pipe, frames=9, steps=2)                                  # 3 latent frames
    cont = streamed(causal_pipe, frames=17, steps=2, context=first)                   # 2 more after them
    assert cont.shape[2] == 2
    again = streamed(causal_pipe, frames=17, steps=2, context=first, use_cache=False)
    torch.testing.assert_close(cont, again, atol=1e-4, rtol=0)
    noised = streamed(causal_pipe, frames=17, steps=4, context=first, context_noise=0.2)
    plain = streamed(causal_pipe, frames=17, steps=4, context=first)
    torch.testing.assert_close(noised[:, :, :1], plain[:, :, :1], atol=0, rtol=0)  # a given context stays clean
    assert (noised[:, :, 1:] - plain[:, :, 1:]).abs().max() > 1e-3                # the model's own frames do not
    with pytest.raises(ValueError, match="context"):
        next(stream_latents(causal_pipe, [PROMPT], frames=9, context=torch.zeros(1, 4, 3, 4, 4)))


def test_a_causal_model_extends_without_windows(causal_pipe):
    from kinema.pipelines.extend import extend_video
    from kinema.video.io import Video

    src = Video(np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), 8.0)
    out = extend_video(causal_pipe, src, PROMPT, frames=21, steps=2)
    assert out.frames.shape == (21, 32, 32, 3)
    assert np.array_equal(out.frames[:5], src.frames[:5])  # the input's own frames come first, the last 4 faded
    assert np.array_equal(extend_video(causal_pipe, src, PROMPT, frames=21, steps=2, blend=0).frames[:9], src.frames)


def test_extension_colours_follow_the_input(causal_pipe, tiny_model_dir):
    """The generated frames' per-channel value distribution is the input's (colour match on), not the model's."""
    from kinema.pipelines.extend import extend_video
    from kinema.pipelines.loading import load_pipeline
    from kinema.video.io import Video

    rng = np.random.default_rng(0)
    src = Video(np.clip(rng.normal((200, 60, 120), 10, (9, 32, 32, 3)), 0, 255).astype(np.uint8), 8.0)
    for pipe in (causal_pipe, load_pipeline(tiny_model_dir)):  # streamed, and window after window
        matched, raw = (extend_video(pipe, src, PROMPT, frames=21, steps=2, match=m).frames[9:] for m in (1.0, 0.0))
        gap = lambda f: np.abs(f.reshape(-1, 3).mean(0) - src.frames.reshape(-1, 3).mean(0)).max()  # noqa: E731
        assert gap(matched) < 2 < gap(raw)
        assert extend_video(pipe, src, PROMPT, frames=21, steps=2, match=0.0).metadata["colour_match"] == 0.0
    with pytest.raises(ValueError, match="colour-match"):
        extend_video(causal_pipe, src, PROMPT, frames=21, match=2.0)


@pytest.mark.parametrize("sizes", [(1, 4, 4, 4, 4, 4, 4), (9, 9, 9, 6)])
def test_colour_anchor_holds_later_frames_to_the_first(sizes):
    """Frames after the first 17 drift (a rising green on the object); anchored, they keep the first frames'
    colours, whatever the chunking; the first 17 frames pass untouched."""
    from kinema.data.shapes import Scene, render_clip
    from kinema.pipelines.stream import colour_anchored

    clip = render_clip(Scene("red", "circle", "bounce", "black"), np.random.default_rng(0), sum(sizes))
    drift = np.linspace(0, 40, len(clip.frames))[:, None, None] * clip.coverage           # (T, H, W)
    frames = clip.frames.astype(float)
    frames[..., 1] += drift
    video = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    chunks = list(torch.split(video, list(sizes), dim=2))
    out = torch.cat(list(colour_anchored(iter(chunks), 17)), dim=2)
    assert torch.equal(out[:, :, :17], video[:, :, :17])
    core = torch.from_numpy(clip.coverage > 0.99)                                           # (T, H, W)
    green = lambda v, t: ((v[0, 1, t][core[t]] + 1) * 127.5).mean().item()  # noqa: E731
    last = len(clip.frames) - 1
    assert green(video, last) - green(video, 8) > 25 and abs(green(out, last) - green(video, 8)) < 5
    assert torch.equal(torch.cat(list(colour_anchored(iter(chunks), 17, 0.0)), dim=2), video)
