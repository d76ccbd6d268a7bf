"""Shared fixtures: tiny random models (seconds on a CPU) and the real MiniLM text encoder, loaded once."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kinema.dit.model import DiT
from kinema.pipelines.loading import save_model
from kinema.pipelines.text_to_video import GenerationSettings
from kinema.text.encoder import TextEncoder, TextEncoderConfig
from kinema.train.dit import DIT_PRESETS
from kinema.train.vae import VAE_PRESETS
from kinema.vae.model import VideoVAE


def tiny_vae(seed: int = 0) -> VideoVAE:
    torch.manual_seed(seed)
    return VideoVAE(VAE_PRESETS["tiny"]).eval()


def tiny_dit(seed: int = 0, **overrides) -> DiT:
    torch.manual_seed(seed)
    dit = DiT(replace(DIT_PRESETS["tiny"], **overrides)).eval()
    for p in dit.parameters():  # Wan's init zeroes the output layer; random weights make outputs informative
        p.data.normal_(0, 0.1)
    return dit


@pytest.fixture(scope="session")
def text_encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A kinema model folder with tiny random weights and the real MiniLM text encoder config."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    defaults = GenerationSettings(frames=9, height=32, width=32, steps=3, guidance=3.0)
    return save_model(path, TextEncoderConfig(), tiny_vae(), tiny_dit(), defaults, name="tiny")
