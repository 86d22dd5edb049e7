"""A ResNet whose shortcut pools before its 1x1 convolution (open_clip's ModifiedResNet,
ResNet-D), linearised: every earlier component crosses that pool and each later frozen ReLU.

Two ways of applying those ops to a term are checked against plain computations: an average
pool whose windows neither overlap nor are padded is a sum over each window
(``kernels.window_sum``), not a product with its dense map; and a gate laid out unlike the terms
it multiplies is copied into their layout once, not read strided by each term."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fxdecomp
from conftest import bound, jitter_, rel_err
from fxdecomp import kernels
from fxdecomp.passes.codegen import CodeGen


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, pool: dict | None):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.pool = nn.AvgPool2d(**pool) if pool else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if pool or cin != cout:
            self.downsample = nn.Sequential(nn.AvgPool2d(**pool) if pool else nn.Identity(),
                                            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def branch(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.bn3(self.conv3(self.pool(h)))

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x):
        return F.relu(self.branch(x) + self.shortcut(x))


class Net(nn.Module):
    def __init__(self, pool: dict):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = Bottleneck(8, 8, None)
        self.layer2 = Bottleneck(8, 16, pool)
        self.layer3 = Bottleneck(16, 16, None)
        self.head = nn.Linear(16, 5)

    def embed(self, x):
        return F.relu(self.stem(x))

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.embed(x)))).mean((2, 3)))


def net(pool: dict, dtype=torch.float64) -> Net:
    torch.manual_seed(0)
    return jitter_(Net(pool).eval(), scale=0.3).to(dtype)


def calls(dm, fn) -> int:
    return sum(1 for n in dm.graph_module.graph.nodes if n.op == "call_function" and n.target is fn)


WHOLE = dict(kernel_size=2, stride=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_pool_of_whole_windows_on_the_stream_is_summed_and_exact(dtype):
    model = net(WHOLE, dtype)
    x = torch.randn(3, 3, 12, 12, dtype=dtype, generator=torch.Generator().manual_seed(1))
    dm = fxdecomp.decompose(model, "head", input_size=(3, 12, 12), linearize=True)
    assert calls(dm, kernels.window_sum) > 0
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= bound(dtype)


def test_the_stem_component_through_the_pool_and_the_gates_by_hand():
    """The embedding's component, written out from the model's own modules: each later block's
    ReLU gate frozen at its actual input, the shortcut's pool, 1x1 convolution and BatchNorm
    scale (its shift is a component of its own), the mean and the head's weight."""
    model = net(WHOLE)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s0 = model.embed(x)
        pre1 = model.layer1.branch(s0) + s0
        s1 = F.relu(pre1)
        pre2 = model.layer2.branch(s1) + model.layer2.shortcut(s1)
        s2 = F.relu(pre2)
        pre3 = model.layer3.branch(s2) + s2
        pool, conv, bn = model.layer2.downsample
        scale = (bn.weight * torch.rsqrt(bn.running_var + bn.eps))[:, None, None]
        c = (pre1 > 0) * s0
        c = (pre2 > 0) * (scale * conv(pool(c)))
        c = (pre3 > 0) * c
        want = c.mean((2, 3)) @ model.head.weight.T
        out = fxdecomp.decompose(model, "head", input_size=(3, 12, 12), linearize=True)(x)
    assert rel_err(out["embed"], want) <= 1e-10


def test_each_component_is_what_the_dense_pool_and_strided_gates_give(monkeypatch):
    """The window sums and laid-out gates change how, not what: with both turned off (the pool
    applied as its dense map, each gate read strided), every component is the same."""
    model = net(WHOLE)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = fxdecomp.decompose(model, "head", input_size=(3, 12, 12), linearize=True)(x)
        monkeypatch.setattr(CodeGen, "_window_side", lambda self, tree, keys: None)
        monkeypatch.setattr(CodeGen, "_elementwise", lambda self, operands, out_atoms, slug: None)
        plain_dm = fxdecomp.decompose(model, "head", input_size=(3, 12, 12), linearize=True)
        plain = plain_dm(x)
    assert calls(plain_dm, kernels.window_sum) == 0
    assert [c.name for c in fast.components] == [c.name for c in plain.components]
    for c in fast.components:
        assert rel_err(fast[c.name], plain[c.name]) <= 1e-12, c.name


def test_a_gate_is_laid_out_once_for_all_the_terms_it_multiplies():
    dm = fxdecomp.decompose(net(WHOLE), "head", input_size=(3, 12, 12), linearize=True)
    copies = [n for n in dm.graph_module.graph.nodes if n.op == "call_method" and n.target == "contiguous"]
    laid = [(n.args[0].args[0], tuple(n.args[0].args[1])) for n in copies if n.args[0].target is torch.permute]
    assert laid, "no gate was laid out as its terms are"
    assert len(laid) == len(set(laid)), "a gate was copied into one layout more than once"
    assert calls(dm, torch.mul) > len(laid), "each laid-out gate should serve several terms"


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1), ceil=st.booleans(),
       include_pad=st.booleans(), override=st.sampled_from([None, 3]), n=st.integers(6, 9))
def test_any_average_pool_on_the_stream_is_exact(k, s, p, ceil, include_pad, override, n):
    if 2 * p > k:
        p = 0  # PyTorch wants the padding at most half the window
    pool = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include_pad,
                divisor_override=override)
    model = net(pool)
    x = torch.randn(2, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dm = fxdecomp.decompose(model, "head", input_size=(3, n, n), linearize=True)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= bound(torch.float64)
    n_out = model.layer2.downsample[0](x.new_zeros(1, 8, n, n)).shape[-1]
    whole = k == s and p == 0 and n_out * k <= n and k > 1
    assert (calls(dm, kernels.window_sum) > 0) == whole, pool


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_window_sum_is_the_dense_window_product(dtype):
    from fxdecomp.core.terms import Window

    x = torch.randn(3, 7, 10, 4, dtype=dtype, generator=torch.Generator().manual_seed(5))
    for dim, k in ((1, 2), (1, 3), (2, 2), (2, 5), (3, 4), (2, 1)):
        n_out = x.shape[dim] // k
        w = Window(n_out, k, x.shape[dim], 1.0 / k).tensor.to(dtype)
        want = torch.movedim(torch.tensordot(x, w, dims=([dim], [1])), -1, dim)
        got = kernels.window_sum(x, dim, n_out, k, 1.0 / k)
        assert got.shape == want.shape
        assert rel_err(got, want) <= bound(dtype), (dim, k)


def test_the_gate_is_the_same_with_and_without_autograd():
    """Without autograd the gate skips the guard that keeps an unselected quotient finite; its
    value must not change, and with autograd the gradient at x = 0 stays finite."""
    x = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x[:5] = 0.0
    x[5:10] = 1e-200
    for f in (F.relu, F.gelu, torch.tanh):
        y = f(x)
        with torch.no_grad():
            fast = kernels.gate(y, x)
        xr = x.clone().requires_grad_()
        slow = kernels.gate(f(xr), xr)
        assert torch.equal(fast, slow.detach()), f
        slow.sum().backward()
        assert torch.isfinite(xr.grad).all(), f
