import pytest
import torch
from safetensors import safe_open

import kinema
from kinema.dit.lora import LoRALinear, adapter_names
from kinema.train import lora as train_lora


def _argv(model_dir, out, steps, *extra):
    return ["--model", str(model_dir), "--out", str(out), "--lora-rank", "2", "--lora-alpha", "4",
            "--shapes-colours", "pink", "--pool", "3", "--frames", "5", "--size", "32", "--batch", "2",
            "--steps", str(steps), "--ckpt-every", "2", "--warmup", "1", "--lr", "1e-2", *extra]


def test_lora_training_trains_only_the_adapter_and_writes_loadable_files(tiny_model_dir, tmp_path):
    out = tmp_path / "pink"
    adapter = train_lora.train(_argv(tiny_model_dir, out, 3))
    with safe_open(str(adapter), "pt") as f:
        meta = f.metadata()
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert meta["rank"] == "2" and meta["alpha"] == "4.0" and meta["trained_steps"] == "3"
    assert len(ups) == 2 * 10 and any(u.abs().max() > 0 for u in ups)  # every target, and it learned

    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    base = kinema.load_pipeline(tiny_model_dir)
    assert all(torch.equal(ck["model"][k], v) for k, v in base.dit.state_dict().items())  # frozen weights

    with_lora = kinema.load_pipeline(tiny_model_dir)
    assert with_lora.load_lora(adapter) == "lora" and adapter_names(with_lora.dit) == ["lora"]
    merged = kinema.load_pipeline(out / "model")  # the adapter baked into a standalone model folder
    assert not any(isinstance(m, LoRALinear) for m in merged.dit.modules())
    assert merged.vae.config == base.vae.config  # the latent statistics the base DiT was trained with
    x, t, text = torch.randn(1, 4, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 6, 384)
    with torch.no_grad():
        torch.testing.assert_close(merged.dit(x, t, text), with_lora.dit(x, t, text), rtol=1e-5, atol=1e-5)
        assert (with_lora.dit(x, t, text) - base.dit(x, t, text)).abs().max() > 1e-6
    with_lora.unload_lora()
    with torch.no_grad():
        assert torch.equal(with_lora.dit(x, t, text), base.dit(x, t, text))


def test_lora_training_resumes_exactly(tiny_model_dir, tmp_path):
    straight = train_lora.train(_argv(tiny_model_dir, tmp_path / "a", 4))
    train_lora.train(_argv(tiny_model_dir, tmp_path / "b", 2))
    resumed = train_lora.train(_argv(tiny_model_dir, tmp_path / "b", 4, "--resume"))
    with safe_open(str(straight), "pt") as a, safe_open(str(resumed), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_bad_lora_training_input_is_one_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="rank"):
        train_lora.train(_argv(tiny_model_dir, tmp_path / "x", 1, "--lora-rank", "0"))
    with pytest.raises(ValueError, match="not Linear layers"):
        train_lora.train(_argv(tiny_model_dir, tmp_path / "y", 1, "--lora-targets", "norm3"))
    with pytest.raises(ValueError, match="usage: kinema lora train"):
        train_lora.main(["fit"])


@pytest.mark.parametrize("mode", ["full", "causal", "factorised"])
def test_preset_args_rebuild_the_models_dit_config(tmp_path, mode):
    from kinema.dit.model import DiT
    from kinema.pipelines.loading import save_model
    from kinema.pipelines.text_to_video import GenerationSettings
    from kinema.text.encoder import TextEncoderConfig
    from kinema.train.dit import DIT_PRESETS, parse_args, with_attention
    from tests.conftest import tiny_vae

    config = with_attention(DIT_PRESETS["shapes"], mode)
    folder = save_model(tmp_path / mode, TextEncoderConfig(), tiny_vae(), DiT(config),
                        GenerationSettings(), name=mode)
    flags = train_lora.preset_args(folder)
    args = parse_args(["--out", str(tmp_path / "run"), *flags])
    rebuilt = DIT_PRESETS[args.preset]
    assert (with_attention(rebuilt, args.attention) if args.attention else rebuilt) == config
