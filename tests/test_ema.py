import pytest
import torch
from torch import nn

from ddpm.training.ema import EMA


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros(1))


def test_ema_update_formula_buffers_and_float32():
    net = _Net().to(torch.float64)
    ema = EMA(net, decay=0.9)
    assert all(v.dtype == torch.float32 for v in ema.params.values())
    start = {k: v.clone() for k, v in ema.params.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net.count.fill_(7)
    assert ema.update(net) == 0.9
    for name, p in net.named_parameters():
        expected = 0.9 * start[name] + 0.1 * p.detach().float()
        torch.testing.assert_close(ema.params[name], expected)
    assert ema.buffers["count"].item() == 7
    target = _Net()
    ema.copy_to(target)
    torch.testing.assert_close(target.lin.weight, ema.params["lin.weight"])
    assert target.count.item() == 7


def test_ema_warmup_matches_diffusers_rule():
    ema = EMA(_Net(), decay=0.9999, warmup=True, inv_gamma=1.0, power=0.75)
    decays = []
    for _ in range(4):
        decays.append(ema.current_decay())
        ema.update(_Net())
    assert decays[0] == 0.0  # the first update copies the weights
    assert decays[1:] == pytest.approx([1 - (1 + n) ** -0.75 for n in (1, 2, 3)])
    ema.num_updates = 10**9
    assert ema.current_decay() == 0.9999
    assert EMA(_Net(), decay=0.5).current_decay() == 0.5


def test_ema_state_round_trip():
    net = _Net()
    ema = EMA(net, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            net.lin.weight.mul_(1.1)
        ema.update(net)
    other = EMA(_Net(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 3
    for k in ema.params:
        assert torch.equal(other.params[k], ema.params[k])
    with pytest.raises(ValueError):
        EMA(net, decay=1.0)
