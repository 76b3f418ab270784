"""ldm/modules/ema.py: LitEma keeps the original buffer names and update rule."""
import pytest
import torch

from ldm.modules.ema import LitEma


def _net():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    net[1].bias.requires_grad_(False)
    return net


def test_buffer_names_are_parameter_names_without_dots_after_decay_and_counter():
    ema = LitEma(_net())
    assert list(ema.state_dict()) == ["decay", "num_updates", "0weight", "0bias", "1weight"]
    assert ema.num_updates.dtype == torch.int32 and ema.decay.dtype == torch.float32


def test_update_follows_warmup_decay_formula():
    net = _net()
    ema = LitEma(net, decay=0.9999)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema(net)
    decay = min(0.9999, (1 + 1) / (10 + 1))
    expected = start - (1 - decay) * (start - net[0].weight)
    assert torch.allclose(ema.state_dict()["0weight"], expected)
    assert int(ema.num_updates) == 1


def test_without_counting_decay_is_constant():
    net = _net()
    ema = LitEma(net, decay=0.5, use_num_upates=False)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    ema(net)
    assert torch.allclose(ema.state_dict()["0weight"], start + 1.0)
    assert int(ema.num_updates) == -1


def test_store_copy_restore_round_trip():
    net = _net()
    ema = LitEma(net)
    original = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in ema.buffers():
            if p.dim() > 0:
                p.fill_(7.0)
    ema.store(net.parameters())
    ema.copy_to(net)
    assert torch.all(net[0].weight == 7.0)
    ema.restore(net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(original, net.parameters()))


def test_decay_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="decay"):
        LitEma(_net(), decay=1.5)
