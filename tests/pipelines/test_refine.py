"""`refine`: a causal model's clip streamed, re-noised to a time t0 and sampled whole from there."""

import pytest
import torch

from kinema.pipelines.loading import load_pipeline
from kinema.pipelines.text_to_video import times_from
from tests.pipelines.test_stream import PROMPT, red_square, streamed


def refined(pipe, image=None, **kw):
    s = pipe.settings(guidance=3.0, **kw)
    text, neg = pipe.encode_prompts([PROMPT], s.negative_prompt)
    keyframes = pipe.encode_keyframes(s, 1, image)
    return pipe.stream_then_refine([PROMPT], [s.seed], image, text, neg, s, keyframes=keyframes), keyframes


def test_the_grid_from_a_time_is_the_tail_of_the_whole_grid(causal_pipe):
    s = causal_pipe.settings(steps=10, shift=3.0)
    whole, _ = times_from(s)
    tail, _ = times_from(s, 0.5)
    assert torch.equal(whole, times_from(s, 1.0)[0]) and tail[0] <= 0.5 < whole[len(whole) - len(tail) - 1]
    assert torch.equal(tail, whole[len(whole) - len(tail):])


def test_refining_from_below_the_last_step_leaves_the_streamed_clip(causal_pipe):
    out, _ = refined(causal_pipe, refine=1e-6)      # t0 = 0: no step is taken and no noise is added
    torch.testing.assert_close(out, streamed(causal_pipe), atol=1e-6, rtol=0)


def test_refining_resamples_from_its_time_and_is_seeded(causal_pipe):
    steps = []
    s = causal_pipe.settings(refine=0.5, steps=6)
    a = causal_pipe.generate([PROMPT], seeds=[3], refine=0.5, steps=6, callback=lambda i, n: steps.append(n))[0]
    b = causal_pipe.generate([PROMPT], seeds=[3], refine=0.5, steps=6)[0]
    plain = causal_pipe.generate([PROMPT], seeds=[3], steps=6)[0]
    assert steps and set(steps) == {len(times_from(s, 0.5)[0]) - 1} and steps[0] < 6   # only the grid below t0
    assert (a.frames == b.frames).all() and not (a.frames == plain.frames).all()


def test_a_refined_image_to_video_keeps_the_image_latent(causal_pipe):
    out, (clean, given) = refined(causal_pipe, image=red_square(), refine=0.5)
    assert given[0, 0] and not given[0, 1:].any()
    torch.testing.assert_close(out[:, :, 0], clean[:, :, 0], atol=0, rtol=0)


def test_refine_is_refused_where_it_cannot_work(tiny_model_dir, causal_pipe):
    with pytest.raises(ValueError, match="causal"):
        load_pipeline(tiny_model_dir).settings(refine=0.5)       # the tiny model attends fully
    with pytest.raises(ValueError, match="refine must be"):
        causal_pipe.settings(refine=1.0)
    with pytest.raises(ValueError, match="last frame"):
        causal_pipe.generate([PROMPT], refine=0.5, last_image=red_square())
