"""The embedded default model: present, within its size budget, and able to generate."""

from pathlib import Path

import numpy as np

import kinema
from kinema.pipelines.loading import BUILTIN_DIR, builtin_models

MODEL = BUILTIN_DIR / "shapes"


def test_default_model_is_packaged_and_small():
    assert "shapes" in builtin_models()
    size = sum(p.stat().st_size for p in MODEL.iterdir())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MiB"


def test_default_model_generates_and_is_seed_deterministic():
    pipe = kinema.load_pipeline()  # no argument: the default
    assert pipe.name == "shapes" and pipe.source == "shapes"
    s = pipe.settings()
    assert (s.frames, s.height, s.width, s.fps) == (17, 64, 64, 8.0)
    a = pipe("a red circle moving right on a black background", seed=1, steps=4, frames=5)
    b = pipe("a red circle moving right on a black background", seed=1, steps=4, frames=5)
    assert a.frames.shape == (5, 64, 64, 3) and (a.frames == b.frames).all()
    assert np.ptp(a.frames) > 0  # not a blank video


def test_package_data_includes_the_model():
    import tomllib

    spec = tomllib.loads(Path("pyproject.toml").read_text())
    patterns = spec["tool"]["setuptools"]["package-data"]["kinema"]
    assert "models/*/*.safetensors" in patterns and "models/*/*.json" in patterns
