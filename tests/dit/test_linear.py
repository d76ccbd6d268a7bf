import pytest
import torch
import torch.nn.functional as F

from kinema.dit import linear as fast
from kinema.dit.model import DiT, DiTConfig

needs_onednn = pytest.mark.skipif(not fast.onednn_available(), reason="this torch build has no oneDNN linear op")


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return fast.Linear(48, 96)


@needs_onednn
def test_inference_takes_onednn_and_equals_f_linear(layer):
    x = torch.randn(2, fast.MIN_ROWS, 48)  # (B, L, D)
    with torch.no_grad():
        assert fast.uses_onednn(x, layer.weight)
        y = layer(x)
    ref = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert y.shape == (2, fast.MIN_ROWS, 96) and y.dtype == torch.float32
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6


@needs_onednn
@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_equal_f_linears(layer, frozen):
    layer.weight.requires_grad_(not frozen)  # frozen: a LoRA base layer, only the input's gradient flows
    x = torch.randn(2, fast.MIN_ROWS, 48, requires_grad=True)
    dy = torch.randn(2, fast.MIN_ROWS, 96)
    grads = []
    for on in (False, True):
        fast.set_onednn(on)
        try:
            x.grad = layer.weight.grad = layer.bias.grad = None
            layer(x).backward(dy)
            grads.append([x.grad, layer.weight.grad, layer.bias.grad])
        finally:
            fast.set_onednn(True)
    for ref, got in zip(*grads):
        if ref is None:
            assert got is None
        else:
            assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert (grads[1][1] is None) == frozen and grads[1][0] is not None


def test_small_inputs_other_dtypes_and_the_switch_take_f_linear(layer):
    x = torch.randn(1, 4 * fast.MIN_ROWS, 48)
    with torch.no_grad():
        assert not fast.uses_onednn(x[:, : fast.MIN_ROWS - 1], layer.weight)
        assert not fast.uses_onednn(x.double(), layer.weight.double())
        fast.set_onednn(False)
        try:
            assert not fast.uses_onednn(x, layer.weight)
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        finally:
            fast.set_onednn(True)


@needs_onednn
def test_a_dit_forward_is_the_same_with_and_without_onednn(monkeypatch):
    taken, decide = [], fast.uses_onednn
    monkeypatch.setattr(fast, "uses_onednn", lambda x, w: taken.append(decide(x, w)) or taken[-1])
    torch.manual_seed(0)
    cfg = DiTConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, attention="causal")
    dit = DiT(cfg).eval()
    for p in dit.parameters():  # the head starts at zero: random weights so that every layer shows
        p.data.normal_(0, 0.05)
    x, t, text = torch.randn(1, 16, 3, 16, 16), torch.tensor([0.4]), torch.randn(1, 7, 32)  # 192 tokens
    with torch.no_grad():
        fast.set_onednn(False)
        try:
            ref = dit(x, t, text)
        finally:
            fast.set_onednn(True)
        out = dit(x, t, text)
    n = len(taken) // 2
    assert not any(taken[:n]) and sum(taken[n:]) >= 4 * cfg.num_layers  # q, k, v, o, FFN of every block: oneDNN
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
