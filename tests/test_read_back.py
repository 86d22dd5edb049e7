"""A whole branch reads its component from the model's own output (``expand._read_back``):
the branch's last layer is not computed a second time, and the component is still the
branch's output less its bias, through the rest of the network."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxdecomp
from conftest import jitter_, rel_err


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.full((d,), 0.7))

    def forward(self, x):
        return x + self.gamma * self.fc2(F.gelu(self.fc1(self.norm(x))))


class Net(nn.Module):
    """Tokens from pixels, three MLP blocks, a mean over tokens and a linear head: each
    block's component at the output is ``head.weight @ mean(gamma * (fc2(h) - fc2.bias))``."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.embed = nn.Linear(3, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(3)])
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x.flatten(2).transpose(1, 2))).mean(1))


def net(dtype=torch.float64) -> Net:
    torch.manual_seed(0)
    return jitter_(Net().eval(), scale=0.3).to(dtype)


def test_the_last_layer_of_a_whole_branch_is_computed_once():
    dm = fxdecomp.decompose(net(), "head", input_size=(3, 4, 4))
    readers = {n.target: [u.name for u in n.users] for n in dm.graph_module.graph.nodes if n.op == "get_attr"}
    for i in range(3):
        users = readers[f"blocks.{i}.fc2.weight"]
        assert len(users) == 1, f"blocks.{i}.fc2.weight is read by {users}: the component recomputes fc2"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_each_branch_read_back_equals_its_output_less_its_bias(dtype, tol):
    model = net(dtype)
    x = torch.randn(4, 3, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    seen = {}
    hooks = [b.fc2.register_forward_hook((lambda i: lambda m, a, out: seen.__setitem__(i, out))(i))
             for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        ref = model(x)
    for h in hooks:
        h.remove()
    dm = fxdecomp.decompose(model, "head", input_size=(3, 4, 4))
    with torch.no_grad():
        out = dm(x)
    assert rel_err(out.contributions.sum(1), ref) <= tol
    for i, b in enumerate(model.blocks):
        want = ((b.gamma * (seen[i] - b.fc2.bias)).mean(1) @ model.head.weight.T).detach()
        names = [c.name for c in out.components if c.name.startswith(f"blocks.{i}") and c.kind == "mlp"]
        assert len(names) == 1, names
        assert rel_err(out[names[0]], want) <= tol, names[0]


def test_at_neuron_granularity_the_units_still_sum_to_the_branch():
    model = net()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = fxdecomp.decompose(model, "head", input_size=(3, 4, 4))(x)
        units = fxdecomp.decompose(model, "neuron", input_size=(3, 4, 4))(x)
    for i in range(3):
        name = next(c.name for c in whole.components if c.name.startswith(f"blocks.{i}") and c.kind == "mlp")
        parts = [c.name for c in units.components if c.name.startswith(name + "[n")]
        assert len(parts) == 64
        summed = torch.stack([units[p] for p in parts]).sum(0)
        assert rel_err(summed, whole[name]) <= 1e-10
