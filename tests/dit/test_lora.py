import copy

import pytest
import torch
from torch import nn

from kinema.dit.lora import (LoRAConfig, LoRAError, LoRALinear, adapter_names, adapter_weights, inject_lora,
                             load_lora, merge_lora, remove_lora, save_lora, set_strength, train_only, unmerge_lora)
from tests.conftest import tiny_dit


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 3, 8, 8, generator=g), torch.tensor([100.0, 800.0]), torch.randn(2, 5, 384, generator=g)


def _randomise(dit, name, seed):
    """Give adapter `name` a non-zero up matrix (a fresh adapter changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in dit.modules():
            if isinstance(layer, LoRALinear) and name in layer.adapters:
                layer.adapters[name].up.weight.normal_(0, 0.3, generator=g)


@torch.no_grad()
def test_fresh_adapter_changes_nothing_and_keeps_base_keys():
    dit = tiny_dit()
    base_keys, x = set(dit.state_dict()), _inputs()
    before = dit(*x)
    inject_lora(dit, LoRAConfig(rank=4, alpha=8))
    assert torch.equal(dit(*x), before)
    keys = set(dit.state_dict())
    assert base_keys <= keys
    assert "blocks.0.self_attn.q.adapters.default.down.weight" in keys
    assert sum(isinstance(m, LoRALinear) for m in dit.modules()) == 2 * 10  # 2 blocks x 10 targets


@torch.no_grad()
def test_strength_scales_the_update_linearly_and_zero_is_off():
    dit = tiny_dit()
    x = _inputs()
    base = dit(*x)
    layer = dit.blocks[0].ffn[0]
    h = torch.randn(3, layer.in_features)
    plain = layer(h)
    inject_lora(dit, LoRAConfig(rank=2, alpha=4, targets=("ffn.0",)))
    _randomise(dit, "default", 1)
    layer = dit.blocks[0].ffn[0]
    u = layer.adapters["default"]
    expected = plain + 2.0 * (h @ u.down.weight.T @ u.up.weight.T)  # alpha / rank = 2
    torch.testing.assert_close(layer(h), expected)
    set_strength(dit, "default", 0.5)
    torch.testing.assert_close(layer(h), plain + 0.5 * 2.0 * (h @ u.down.weight.T @ u.up.weight.T))
    set_strength(dit, "default", 0.0)
    assert torch.equal(dit(*x), base)


@torch.no_grad()
def test_several_adapters_add_up_and_remove_one_at_a_time():
    dit = tiny_dit()
    x = _inputs()
    base = dit(*x)
    inject_lora(dit, LoRAConfig(rank=2), "a")
    _randomise(dit, "a", 1)
    only_a = dit(*x)
    inject_lora(dit, LoRAConfig(rank=3, targets=("cross_attn.k", "ffn.2")), "b", strength=0.7)
    _randomise(dit, "b", 2)
    both = dit(*x)
    assert adapter_names(dit) == ["a", "b"]
    assert (both - only_a).abs().max() > 1e-4
    with pytest.raises(LoRAError, match="already loaded"):
        inject_lora(dit, LoRAConfig(rank=2), "a")
    remove_lora(dit, "b")
    torch.testing.assert_close(dit(*x), only_a, rtol=0, atol=1e-6)
    remove_lora(dit)
    assert not any(isinstance(m, LoRALinear) for m in dit.modules())
    assert torch.equal(dit(*x), base)
    with pytest.raises(LoRAError, match="no adapter named"):
        remove_lora(dit, "a")


@torch.no_grad()
def test_merge_gives_the_same_output_and_unmerge_restores_weights_exactly():
    dit = tiny_dit()
    x = _inputs()
    weights = {k: v.clone() for k, v in dit.state_dict().items()}
    inject_lora(dit, LoRAConfig(rank=2, alpha=1), "a")
    inject_lora(dit, LoRAConfig(rank=4, alpha=8), "b", strength=0.5)
    _randomise(dit, "a", 1)
    _randomise(dit, "b", 2)
    unmerged = dit(*x)
    merge_lora(dit)
    q = dit.blocks[0].self_attn.q
    assert not torch.equal(q.weight, weights["blocks.0.self_attn.q.weight"])
    torch.testing.assert_close(dit(*x), unmerged, rtol=1e-5, atol=1e-5)
    set_strength(dit, "b", 1.5)  # re-merged with the new strength
    merge_b_15 = dit(*x)
    unmerge_lora(dit, "b")
    merge_lora(dit, "b")
    assert torch.equal(dit(*x), merge_b_15)
    unmerge_lora(dit)
    assert all(torch.equal(dit.state_dict()[k], v) for k, v in weights.items())
    remove_lora(dit)
    assert set(dit.state_dict()) == set(weights)


def test_train_only_freezes_all_but_the_adapter_and_gradients_reach_it():
    dit = tiny_dit()
    params = inject_lora(dit, LoRAConfig(rank=2), "pink")
    trainable = train_only(dit, "pink")
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert sum(p.numel() for p in dit.parameters() if p.requires_grad) == sum(p.numel() for p in params)
    dit(*_inputs()).square().mean().backward()
    assert all(p.grad is not None for p in params)
    assert dit.blocks[0].self_attn.q.weight.grad is None
    ema = copy.deepcopy(dit)  # the training loop's EMA is a deep copy: the adapters come with it
    assert adapter_names(ema) == ["pink"]


@torch.no_grad()
def test_save_and_load_round_trip_identically(tmp_path, caplog):
    dit = tiny_dit()
    x = _inputs()
    cfg = LoRAConfig(rank=3, alpha=5.0, targets=("self_attn.q", "self_attn.v", "ffn.2"))
    inject_lora(dit, cfg, "style")
    _randomise(dit, "style", 3)
    expected = dit(*x)
    path = save_lora(tmp_path / "style.safetensors", dit, "style", cfg)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert "diffusion_model.blocks.1.ffn.2.lora_up.weight" in f.keys()
    assert LoRAConfig.from_metadata(meta) == cfg
    other = tiny_dit()
    with caplog.at_level("WARNING"):
        name = load_lora(other, path)
    assert name == "style" and not caplog.records  # every key matched
    torch.testing.assert_close(other(*x), expected, rtol=0, atol=0)
    saved, loaded = adapter_weights(dit, "style"), adapter_weights(other, "style")
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k].down, loaded[k].down) and torch.equal(saved[k].up, loaded[k].up)
               and saved[k].alpha == loaded[k].alpha for k in saved)
    assert load_lora(other, path, strength=0.0) == "style_2"  # a second copy gets a free name


def test_bad_configs_and_targets_are_refused():
    with pytest.raises(LoRAError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(LoRAError, match="not Linear layers"):
        inject_lora(tiny_dit(), LoRAConfig(targets=("norm3",)))
    with pytest.raises(LoRAError, match="letters"):
        inject_lora(tiny_dit(), LoRAConfig(), "bad.name")


def test_plain_linear_is_restored_after_removal():
    dit = tiny_dit()
    w = dit.blocks[1].ffn[2].weight
    inject_lora(dit, LoRAConfig(rank=2, targets=("ffn.2",)))
    remove_lora(dit)
    assert type(dit.blocks[1].ffn[2]) is nn.Linear and dit.blocks[1].ffn[2].weight is w
