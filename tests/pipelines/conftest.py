"""Fixtures of the pipeline tests: the tiny model made causal, with one expert and with two."""

from dataclasses import replace

import pytest
import torch

from kinema.dit.model import DiT
from kinema.pipelines.loading import load_pipeline
from kinema.pipelines.two_experts import TwoExpertPipeline


@pytest.fixture(params=["one expert", "two experts"])
def causal_pipe(tiny_model_dir, request):
    """The tiny model with a block-causal mask; also as a two-expert model (a second, different causal DiT below
    t = 0.5), whose experts each keep their own KV cache."""
    pipe = load_pipeline(tiny_model_dir)
    dit = DiT(replace(pipe.dit.config, attention="causal")).eval()
    dit.load_state_dict(pipe.dit.state_dict())  # same weights, block-causal mask
    if request.param == "one expert":
        pipe.dit = dit
        return pipe
    low = DiT(dit.config).eval()
    torch.manual_seed(5)
    for p in low.parameters():
        p.data.normal_(0, 0.1)
    return TwoExpertPipeline(pipe.text_encoder, pipe.vae, dit, low, 0.5, pipe.defaults, "two", pipe.device)
