"""kinema: text-to-video and image-to-video with a causal video VAE and a flow-matching diffusion transformer.

    import kinema
    pipe = kinema.load_pipeline("shapes")          # the embedded default, or a model folder
    pipe("a red circle moving right on a black background", seed=0).save("out.mp4")
"""

__version__ = "0.1.0"


def load_pipeline(name_or_path="shapes", device="cpu", dtype=None, offload="auto"):
    """A pipeline with .text_encoder, .vae and .dit; see kinema.pipelines.loading.load_pipeline."""
    import torch

    from kinema.pipelines.loading import load_pipeline as _load

    return _load(name_or_path, device=device, dtype=dtype or torch.float32, offload=offload)


__all__ = ["load_pipeline", "__version__"]
