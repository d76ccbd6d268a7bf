import pytest
import torch
from dataclasses import replace

from kinema.dit.model import DiT
from kinema.train.deepen import block_order, deepen_state
from kinema.train.dit import DIT_PRESETS


def tiny(layers):
    return DiT(replace(DIT_PRESETS["tiny"], num_layers=layers, attention="causal"))


def _randomise(dit):
    for p in dit.parameters():  # the presets zero some output layers at init: make every block do something
        torch.nn.init.normal_(p, std=0.1)


def test_a_deepened_dit_computes_what_the_trained_one_does():
    torch.manual_seed(0)
    old, new = tiny(2), tiny(5)
    _randomise(old)
    new.load_state_dict(deepen_state(old.state_dict(), 2, 5))
    x, t, text = torch.randn(2, 4, 3, 4, 4), torch.tensor([0.3, 0.8]), torch.randn(2, 7, old.config.text_dim)
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, text), old(x, t, text), atol=1e-5, rtol=1e-5)
    _randomise(new)  # and the copies are real blocks that change the output once trained
    with torch.no_grad():
        assert not torch.allclose(new(x, t, text), old(x, t, text), atol=1e-3)


def test_copies_go_to_the_middle_blocks_and_fewer_blocks_are_refused():
    assert block_order(6, 10) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert block_order(6, 6) == list(range(6))
    order = block_order(6, 12)
    assert len(order) == 12 and order == sorted(order) and order.count(0) == order.count(5) == 1
    with pytest.raises(ValueError, match="only adding"):
        block_order(6, 4)
