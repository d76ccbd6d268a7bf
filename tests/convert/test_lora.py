"""Wan LoRA files in the diffusers/peft, ComfyUI and musubi layouts, built here from a tiny random Wan model:
loaded onto kinema's DiT they give the same output as the same LoRA applied by diffusers/peft."""

import pytest
import torch
from safetensors.torch import save_file

from kinema.convert.lora import convert_lora_state, summarise_keys
from kinema.convert.wan import convert_diffusers_dit, diffusers_dit_key
from kinema.dit.lora import LoRAError, adapter_names, load_lora, remove_lora
from kinema.dit.model import DiT, DiTConfig

HEADS, HEAD_DIM, LAYERS, FFN, TEXT_DIM = 2, 12, 2, 64, 32
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]


def _tiny_wan():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=16,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=FFN, num_layers=LAYERS).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    return ref


def _kinema_dit(ref_state: dict) -> DiT:
    """kinema's DiT with the weights of the tiny Wan model (its state dict without the LoRA)."""
    cfg = DiTConfig(dim=HEADS * HEAD_DIM, num_heads=HEADS, num_layers=LAYERS, ffn_dim=FFN, text_dim=TEXT_DIM,
                    freq_dim=32)
    dit = DiT(cfg).eval()
    dit.load_state_dict(convert_diffusers_dit(ref_state), strict=True)
    return dit


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 16, 3, 8, 8, generator=g), torch.tensor([999.0, 321.0]),
            torch.randn(2, 9, TEXT_DIM, generator=g))


def _rel_err(got, expected) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def peft_wan():
    """(tiny Wan with a random peft LoRA, its base output, its LoRA output, the peft LoRA state, its config)."""
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict

    ref = _tiny_wan()
    ref.base_state = {k: v.clone() for k, v in ref.state_dict().items()}
    x = _inputs()
    with torch.no_grad():
        base = ref(*x, return_dict=False)[0]
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False,
                          alpha_pattern={"attn2.to_k": 2})  # one layer with its own alpha
    torch.manual_seed(2)
    ref.add_adapter(cfg)
    with torch.no_grad():
        out = ref(*x, return_dict=False)[0]
    assert _rel_err(base, out) > 1e-2  # the LoRA matters
    return ref, base, out, get_peft_model_state_dict(ref), cfg


def _peft_alphas(ref) -> dict[str, float]:
    """diffusers module name -> the alpha peft uses for it (scaling x rank)."""
    return {name: m.scaling["default"] * m.r["default"] for name, m in ref.named_modules() if hasattr(m, "scaling")
            and "default" in getattr(m, "scaling", {})}


def _original_layout(state, alphas, key_of) -> dict:
    """peft's state dict in the original-Wan-name layouts (ComfyUI / musubi), with per-layer .alpha."""
    out = {}
    for key, value in state.items():
        module, part = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        path = diffusers_dit_key(module + ".weight").removesuffix(".weight")
        out[f"{key_of(path)}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = value.contiguous()
        out[f"{key_of(path)}.alpha"] = torch.tensor(float(alphas[module]))
    return out


def _diffusers_reference(path, x):
    """The file as diffusers itself loads it onto a fresh copy of the tiny Wan model."""
    from diffusers import WanPipeline

    fresh = _tiny_wan()
    state, meta = WanPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    fresh.load_lora_adapter(state, prefix="transformer", adapter_name="file", metadata=meta)
    with torch.no_grad():
        return fresh(*x, return_dict=False)[0]


@pytest.mark.parametrize("layout", ["diffusers", "comfyui", "musubi"])
@torch.no_grad()
def test_lora_files_match_diffusers_peft(peft_wan, tmp_path, layout, caplog):
    ref, base, expected, state, cfg = peft_wan
    x = _inputs()
    if layout == "diffusers":
        from diffusers import WanPipeline

        WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=state,
                                      transformer_lora_adapter_metadata=cfg.to_dict())
        path = tmp_path / "pytorch_lora_weights.safetensors"
    else:
        key_of = (lambda p: f"diffusion_model.{p}") if layout == "comfyui" else \
                 (lambda p: "lora_unet_" + p.replace(".", "_"))
        path = tmp_path / f"{layout}.safetensors"
        save_file(_original_layout(state, _peft_alphas(ref), key_of), str(path))
    assert _rel_err(_diffusers_reference(path, x), expected) <= 1e-5  # the file holds the same LoRA for diffusers

    dit = _kinema_dit(ref.base_state)
    assert _rel_err(dit(*x), base) <= 1e-5
    with caplog.at_level("WARNING"):
        load_lora(dit, path)
    assert not caplog.records  # every key loaded
    got = dit(*x)
    assert _rel_err(got, expected) <= 1e-5
    assert (got - expected).abs().max().item() <= 1e-5


@torch.no_grad()
def test_diffusers_file_without_metadata_uses_alpha_equal_rank_like_diffusers(peft_wan, tmp_path):
    ref, _, _, state, _ = peft_wan
    x = _inputs()
    path = tmp_path / "plain.safetensors"
    save_file({f"transformer.{k}": v.contiguous() for k, v in state.items()}, str(path))
    dit = _kinema_dit(ref.base_state)
    load_lora(dit, path, strength=1.0)
    assert _rel_err(dit(*x), _diffusers_reference(path, x)) <= 1e-5


def test_unmatched_keys_are_listed_in_one_warning(peft_wan, tmp_path, caplog):
    ref, _, _, state, _ = peft_wan
    keys = {f"transformer.{k}": v.contiguous() for k, v in state.items()}
    r = next(iter(state.values())).shape[0]
    for i in range(LAYERS):  # Wan 2.1 I2V keys, which a T2V model does not have
        keys[f"transformer.blocks.{i}.attn2.add_k_proj.lora_A.weight"] = torch.zeros(r, HEADS * HEAD_DIM)
        keys[f"transformer.blocks.{i}.attn2.add_k_proj.lora_B.weight"] = torch.zeros(HEADS * HEAD_DIM, r)
    keys["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.zeros(HEADS * HEAD_DIM)
    path = tmp_path / "i2v.safetensors"
    save_file(keys, str(path))
    dit = _kinema_dit(ref.base_state)
    with caplog.at_level("WARNING"):
        load_lora(dit, path)
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "5 of" in msg and "blocks.*.attn2.add_k_proj.lora_A.weight (x2)" in msg and ".diff_b" in msg
    assert adapter_names(dit) == ["i2v"]


def test_a_file_for_another_model_is_an_error_naming_the_reason(peft_wan, tmp_path):
    ref, _, _, state, _ = peft_wan
    path = tmp_path / "big.safetensors"
    save_file({f"transformer.{k}": torch.zeros(v.shape[0] * 2, v.shape[1] * 2) for k, v in state.items()},
              str(path))
    dit = _kinema_dit(ref.base_state)
    with pytest.raises(LoRAError, match="none of its .* keys fits this model.*another model size"):
        load_lora(dit, path)
    assert adapter_names(dit) == []
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoRAError, match="cannot read"):
        load_lora(dit, tmp_path / "junk.safetensors")
    with pytest.raises(LoRAError, match="does not exist"):
        load_lora(dit, tmp_path / "missing.safetensors")


def test_layouts_are_recognised_and_keys_summarised():
    dit = DiT(DiTConfig(dim=24, num_heads=2, num_layers=1, ffn_dim=32, text_dim=8, freq_dim=16))
    pair = lambda i, o: (torch.zeros(2, i), torch.zeros(o, 2))  # noqa: E731
    d, u = pair(24, 24)
    cases = {"diffusers": {"transformer.blocks.0.attn1.to_q.lora_A.weight": d,
                           "transformer.blocks.0.attn1.to_q.lora_B.weight": u},
             "ComfyUI": {"diffusion_model.blocks.0.cross_attn.o.lora_A.weight": d,
                         "diffusion_model.blocks.0.cross_attn.o.lora_B.weight": u},
             "musubi": {"lora_unet_blocks_0_self_attn_o.lora_down.weight": d,
                        "lora_unet_blocks_0_self_attn_o.lora_up.weight": u,
                        "lora_unet_blocks_0_self_attn_o.alpha": torch.tensor(1.0)}}
    for layout, state in cases.items():
        loaded = convert_lora_state(state, dit)
        assert loaded.layout == layout and len(loaded.weights) == 1 and not loaded.unmatched
    musubi = convert_lora_state(cases["musubi"], dit)
    assert musubi.weights["blocks.0.self_attn.o"].alpha == 1.0
    text = summarise_keys({"blocks.3.x.diff": "patch", "blocks.4.x.diff": "patch", "head.y": "other"})
    assert text == "patch: blocks.*.x.diff (x2); other: head.y"
    remove_lora(dit)  # nothing loaded: a no-op
